"""What a kind of descriptor is to the files registry: one :class:`FdKind` entry, one module.

The registry (:mod:`ckpt.resources.files`) walks every descriptor of the
tree, asks the kinds in :data:`ckpt.resources.files.KINDS` order which one
*claims* it (by its ``/proc/PID/fd`` link and its ``stat``), lets that kind
fill the open file's :class:`FileEntry` at dump (:class:`FdDump` is what it
may see), and at restore asks the kind of each entry to make a new open
file inside the target (:class:`Opener` is what it may use), which the
registry then places at every fd number that shares it.  Everything that is
the same for all kinds — one entry per open file description (kcmp), fd
numbers and FD_CLOEXEC, F_SETOWN owners, files shared across a tree — stays
in the registry.

A kind whose open files depend on each other across the tree (the two ends of
a pipe, the peers of unix sockets, an epoll's watches) keeps that part in
its module too, called by the registry once every entry exists.

Adding a kind: a module under ``ckpt/resources`` with ``dump`` and
``restore`` of the signatures below, a ``KIND = FdKind(...)`` in it, and
that entry in ``KINDS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import common_pb2, files_pb2
from ..kernel.arch_x86_64 import NR
from ..procfs.fdinfo import FdInfo
from . import fileid

if TYPE_CHECKING:
    from . import tcp
    from .ghost import GhostObjects
    from .memfd import MemfdObjects
    from .pipes import PipeRestorer
    from .tty import PtyPairs
    from .unix import UnixRestorer

__all__ = ["FileEntry", "StdioPolicy", "OpenFd", "DumpOptions", "FdDump", "Opener", "FdKind", "refuse"]

FileEntry = files_pb2.FileEntry
_STDIO = (0, 1, 2)
_AT_FDCWD = -100


@dataclass(frozen=True)
class StdioPolicy:
    """What to do with descriptors that point outside the process (CRIU's --shell-job and --inherit-fd).

    ``shell_job``: a descriptor on a terminal is re-attached to ``tty`` (default:
    the restorer's own terminal); without it a terminal is refused.  ``inherit``:
    for a stdio fd (0-2) whose pipe or FIFO peer is another process, the
    restorer's descriptor to install there instead (target fd → our fd).
    """

    shell_job: bool = False
    tty: str | None = None
    inherit: Mapping[int, int] = field(default_factory=dict)
    #: Reopen a file that changed since the dump (size, mtime, build-id) with a note instead of refusing.
    allow_changed: bool = False
    #: The image was taken on this machine since its boot: device and inode numbers name the same files
    #: (an inotify watch is checked by its inode on the filesystem it was on).
    same_boot: bool = False
    #: File id → the restorer's descriptor of a socket handed over as it is (``InetSocket.handed_over``:
    #: a migration within one network namespace).
    handed: Mapping[int, int] = field(default_factory=dict)

    def terminal(self) -> str:
        if self.tty:
            return self.tty
        for fd in _STDIO:
            if os.isatty(fd):
                return os.ttyname(fd)
        raise Unsupported("--shell-job: the restorer has no terminal to attach the process to",
                          hint="run the restore from a terminal")


@dataclass(frozen=True)
class OpenFd:
    """One descriptor as the registry saw it."""

    fd: int
    link: str
    st: os.stat_result
    info: FdInfo

    @property
    def dev_ino(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


def refuse(pid: int, fd: int, what: str, hint: str | None = None) -> Unsupported:
    """The refusal of one descriptor: ``process PID: fd N is WHAT, which ckpt cannot dump``."""
    return Unsupported(f"process {pid}: fd {fd} is {what}, which ckpt cannot dump", hint=hint)


@dataclass(frozen=True)
class DumpOptions:
    """The dump's choices that some kinds act on (the rest ignore them)."""

    policy: StdioPolicy = StdioPolicy()
    #: Most bytes of data (holes not counted) of a deleted file that a dump stores.
    deleted_max: int = 64 << 20
    #: --tcp-close: a TCP connection comes back closed instead of being refused.
    tcp_close: bool = False
    #: --tcp-established: connections are locked and read in repair mode.
    tcp_session: "tcp.Session | None" = None
    #: What was not kept exactly; None: warnings instead.
    notes: list[str] | None = None
    #: The losses the user lets through (``--tolerate``, :mod:`ckpt.tolerance`); any other is refused.
    tolerate: frozenset[str] = frozenset()
    #: The live processes of the dumped tree (a kind naming a process, a pidfd or a /proc file, checks that a
    #: restore can name it again).
    tree: frozenset[int] = frozenset()
    #: A migration within one network namespace: bound inet sockets go to the restore as they are
    #: (:func:`ckpt.resources.sockets.describe`).
    hand_over: bool = False


@dataclass(frozen=True)
class FdDump:
    """One open file as its kind's ``dump`` sees it: through the descriptor of ``pid`` that first uses it.

    ``in_flight_only``: no process holds it, only a unix socket's queue
    (``pid`` is ckpt, holding a peek's duplicate): what is tied to a process's
    own descriptors or to a live connection must be refused.
    """

    pid: int
    o: OpenFd
    opts: DumpOptions
    in_flight_only: bool = False

    @property
    def fd(self) -> int:
        return self.o.fd

    @property
    def info(self) -> FdInfo:
        return self.o.info

    def refuse(self, what: str, hint: str | None = None) -> Unsupported:
        return refuse(self.pid, self.o.fd, what, hint)


@dataclass
class Opener:
    """What a kind's ``restore`` may use to make its open file inside the target of ``inj``.

    The per-kind helpers (pipes, unix sockets, memfd objects) live for one
    process's files; ``content`` loads stored bytes (a deleted file's).
    """

    inj: Injector
    s: Scratch
    policy: StdioPolicy
    content: Callable[[common_pb2.ContentRef], bytes]
    warnings: list[str]
    pipes: PipeRestorer
    unix_socks: UnixRestorer
    memfds: MemfdObjects
    #: The restore's pseudo-terminal pairs, each opened once for the tree (:class:`ckpt.resources.tty.PtyPairs`).
    ptys: "PtyPairs | None" = None
    #: epoll entries and the fd number each ends up at: watches are added once every fd is placed.
    epolls: list[tuple[FileEntry, int]] = field(default_factory=list)
    #: The restore's deleted files, directories and FIFOs (:mod:`ckpt.resources.ghost`).
    ghosts: "GhostObjects | None" = None

    def openat(self, path: str, flags: int, what: str, mode: int = 0) -> int:
        """``openat(AT_FDCWD, path, flags, mode)`` in the target; RestoreError naming ``what`` if it fails."""
        raw = os.fsencode(path) + b"\0"
        if len(raw) > self.s.size:
            raise RestoreError(f"{what} {path!r}: path too long")
        self.s.write(0, raw)
        try:
            return self.inj.call(NR.openat, _AT_FDCWD, self.s.addr, flags, mode, name=f"openat({path!r})")
        except OSError as exc:
            raise RestoreError(f"cannot reopen {what} {path!r}: {exc.strerror}",
                               hint="the file must still exist where it was when the process was dumped") from exc

    def seek(self, fd: int, e: FileEntry) -> None:
        """The entry's file offset, when it has one."""
        if e.pos:
            self.inj.call(NR.lseek, fd, e.pos, os.SEEK_SET, name=f"lseek({e.path!r}, {e.pos})")

    def check_same(self, e: FileEntry, fd: int) -> None:
        """The file opened at ``e.path`` is the image's: by size, mtime and build-id (a directory or device by
        its type and device number: a directory's size and mtime change with its entries); an image older
        than that, by device and inode as before (:func:`fileid.compare`)."""
        link = f"/proc/{self.inj.pid}/fd/{fd}"
        st = os.stat(link)
        want = e.identity
        if not want.by_path and e.kind in (FileEntry.CHR, FileEntry.DIR):  # an older image: as then
            want = common_pb2.FileIdentity(dev=want.dev, ino=want.ino, size=st.st_size, mtime_ns=st.st_mtime_ns)
        changed = fileid.compare(st, want, lambda: fileid.BUILD_IDS.of_path(link, e.path)[1])
        if changed and self.policy.allow_changed:
            self.warnings.append(f"{changed.text(repr(e.path))}; reopened as it is now")
        elif changed:
            self.inj.close(fd)
            raise RestoreError(f"{changed.text(repr(e.path))}: the restored program would see another file",
                               hint="restore the file as it was, dump again, or pass --allow-changed-files")


@dataclass(frozen=True)
class FdKind:
    """One kind of open file: how the registry recognises it, and its two sides.

    ``claims`` sees a descriptor (link, stat) and says whether it is of this
    kind; the first entry of the table that claims it wins.  ``dump`` fills
    the entry (kind-specific fields; it may change ``entry.kind``, as sockets
    do between inet and unix) or raises Unsupported naming what it refuses.
    ``restore`` returns a new descriptor of the target on a new open file
    equal to the entry's (status flags included), at any number.
    """

    kind: int
    claims: Callable[[OpenFd], bool] | None
    dump: Callable[[FdDump, FileEntry], None]
    restore: Callable[[Opener, FileEntry, list[int]], int]


def anon(name: str) -> Callable[[OpenFd], bool]:
    """Claims the anonymous inode whose /proc/PID/fd link is ``name`` (``anon_inode:[eventfd]``)."""
    return lambda o: o.link == name
