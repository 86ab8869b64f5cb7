"""epoll instances: re-created with every watch (fd, events, data) that fdinfo's ``tfd:`` lines show.

A watch names the watched file by the fd number it was added with and lives
as long as that open file, not that number: the program may have closed the
number since (the file still open under another one, a dup) or put another
file there.  Dump finds the open file of each watch among the process's
descriptors on the watched inode with ``kcmp(KCMP_EPOLL_TFD)`` (the number it
was added with first) and records its FileEntry; a watch whose file no
descriptor of the process holds (held only by another process, or in flight)
is refused.  Restore creates the instance when its fd's turn comes, and adds
the watches only once every descriptor is in place (:func:`add_watches`),
because a watched fd may have a higher number than the epoll fd itself.  A
watch whose number holds its file is added as is; any other is added under
its old number for the moment: the file is dup'ed there (what sits there is
moved aside and put back after), EPOLL_CTL_ADD, the number closed or given
back — so fdinfo shows the same ``tfd`` as at the dump.  Readiness already
reported and not yet consumed (edge-triggered state, EPOLLONESHOT already
fired) is not kept: level-triggered watches (what most event loops use)
re-report it anyway.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Mapping, Sequence

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.kcmp import same_epoll_target
from ..procfs.fdinfo import FdInfo
from .fdkind import FdDump, FdKind, Opener, anon

__all__ = ["EPOLL_CTL_ADD", "KIND", "dump", "dump_watches", "restore", "add_watches"]

EPOLL_CTL_ADD = 1
_EPOLL_EVENT = struct.Struct("<IQ")  # struct epoll_event is packed on x86_64: 12 bytes


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Nothing yet: the watches are read once every descriptor has its entry (:func:`dump_watches`)."""
    if d.in_flight_only:
        raise d.refuse("an epoll instance", "its watches name descriptors of the process that holds it: dump once "
                       "the program has received it")


def dump_watches(pid: int, fd: int, info: FdInfo, entry: files_pb2.FileEntry,
                 inode_of: Mapping[int, tuple[int, int]], file_of: Mapping[int, int]) -> None:
    """``inode_of``: fd → (st_ino, file id) of every fd of the process; ``file_of``: fd → FileEntry.id."""
    ep = files_pb2.Epoll()
    seen: dict[int, int] = {}  # tfd → watches with that number so far (KCMP_EPOLL_TFD's toff: fdinfo's order)
    for t in info.epoll_targets:
        toff = seen[t.tfd] = seen.get(t.tfd, -1) + 1
        holder = _holder(pid, fd, t.tfd, toff, t.ino, inode_of)
        if holder is None:
            raise Unsupported(f"process {pid}: fd {fd} is an epoll instance watching a file added as fd {t.tfd} "
                              f"(inode {t.ino}) that no descriptor of the process holds any more",
                              hint="ckpt re-adds a watch through a descriptor of the process on its file")
        ep.targets.append(files_pb2.EpollTarget(fd=t.tfd, file_id=file_of[holder], events=t.events, data=t.data))
    entry.epoll.CopyFrom(ep)


def _holder(pid: int, epfd: int, tfd: int, toff: int, ino: int,
            inode_of: Mapping[int, tuple[int, int]]) -> int | None:
    """A descriptor of ``pid`` on the open file of the watch (``tfd``, ``toff``), the number it was added with
    first; None if the process holds that file under no number."""
    candidates = [n for n, (i, _) in inode_of.items() if i == ino]
    candidates.sort(key=lambda n: n != tfd)
    for n in candidates:
        if same_epoll_target(pid, n, pid, epfd, tfd, toff):
            return n
    return None


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """An empty instance; its watches are added by :func:`add_watches` once every fd is placed."""
    r.epolls.append((entry, fds[0]))
    return r.inj.call(NR.epoll_create1, 0o2000000, name="epoll_create1(EPOLL_CLOEXEC)")


def add_watches(inj: Injector, s: Scratch, epfd: int, entry: files_pb2.FileEntry,
                fds: Sequence[files_pb2.FdEntry]) -> None:
    """EPOLL_CTL_ADD every saved watch; every descriptor of the process (``fds``) must be at its number."""
    file_at = {f.fd: f for f in fds}
    fd_of: dict[int, int] = {}
    for f in fds:
        fd_of.setdefault(f.file_id, f.fd)
    high = max(file_at, default=0) + 1
    for t in entry.epoll.targets:
        here = file_at.get(t.fd)
        if here is not None and here.file_id == t.file_id:
            _add(inj, s, epfd, t)
            continue
        if t.file_id not in fd_of:
            raise RestoreError(f"epoll fd {epfd}: the file it watched as fd {t.fd} is not open in the process")
        # Added under its old number for the moment: what is there now moves aside and comes back after.
        aside = None if here is None else inj.call(NR.fcntl, t.fd, fcntl.F_DUPFD_CLOEXEC, high,
                                                   name=f"fcntl({t.fd}, F_DUPFD_CLOEXEC)")
        try:
            inj.call(NR.dup3, fd_of[t.file_id], t.fd, 0, name=f"dup3({fd_of[t.file_id]}, {t.fd})")
            _add(inj, s, aside if epfd == t.fd and aside is not None else epfd, t)
        finally:
            if aside is None:
                inj.close(t.fd)
            else:
                cloexec = os.O_CLOEXEC if here.fd_flags & fcntl.FD_CLOEXEC else 0
                inj.call(NR.dup3, aside, t.fd, cloexec, name=f"dup3({aside}, {t.fd})")
                inj.close(aside)


def _add(inj: Injector, s: Scratch, epfd: int, t: files_pb2.EpollTarget) -> None:
    s.write(0, _EPOLL_EVENT.pack(t.events, t.data))
    try:
        inj.call(NR.epoll_ctl, epfd, EPOLL_CTL_ADD, t.fd, s.addr, name=f"epoll_ctl(ADD, {t.fd})")
    except OSError as exc:
        raise RestoreError(f"epoll fd {epfd}: cannot watch fd {t.fd} again: {exc.strerror}") from exc


KIND = FdKind(files_pb2.FileEntry.EPOLL, anon("anon_inode:[eventpoll]"), dump, restore)
