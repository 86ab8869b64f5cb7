"""epoll instances: re-created with every watch (fd, events, data) that fdinfo's ``tfd:`` lines show.

A watch names the watched file by the fd number it was added with and by the
file's inode.  Dump checks that this fd still refers to that inode in the
process (a watch whose fd was closed or reused since cannot be re-added by
number) and records the FileEntry it points to.  Restore creates the
instance when its fd's turn comes, and adds the watches only once every
descriptor is in place (:func:`add_watches`), because a watched fd may have a
higher number than the epoll fd itself.  Readiness already reported and not
yet consumed (edge-triggered state, EPOLLONESHOT already fired) is not kept:
level-triggered watches (what most event loops use) re-report it anyway.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
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
    for t in info.epoll_targets:
        here = inode_of.get(t.tfd)
        if here is None or here[0] != t.ino:
            raise Unsupported(f"process {pid}: fd {fd} is an epoll instance watching fd {t.tfd} (inode {t.ino}), "
                              "which is no longer open under that number", hint="such a watch cannot be re-added")
        ep.targets.append(files_pb2.EpollTarget(fd=t.tfd, file_id=file_of[t.tfd], events=t.events, data=t.data))
    entry.epoll.CopyFrom(ep)


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """An empty instance; its watches are added by :func:`add_watches` once every fd is placed."""
    r.epolls.append((entry, fds[0]))
    return r.inj.call(NR.epoll_create1, 0o2000000, name="epoll_create1(EPOLL_CLOEXEC)")


def add_watches(inj: Injector, s: Scratch, epfd: int, entry: files_pb2.FileEntry) -> None:
    """EPOLL_CTL_ADD every saved watch; the watched fds must be at their numbers already."""
    for t in entry.epoll.targets:
        s.write(0, _EPOLL_EVENT.pack(t.events, t.data))
        try:
            inj.call(NR.epoll_ctl, epfd, EPOLL_CTL_ADD, t.fd, s.addr, name=f"epoll_ctl(ADD, {t.fd})")
        except OSError as exc:
            raise RestoreError(f"epoll fd {epfd}: cannot watch fd {t.fd} again: {exc.strerror}") from exc


KIND = FdKind(files_pb2.FileEntry.EPOLL, anon("anon_inode:[eventpoll]"), dump, restore)
