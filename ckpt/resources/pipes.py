"""Pipes and FIFOs whose every end is inside the dumped process, with the bytes still buffered in them.

A pipe cannot be peeked: the only way to learn its bytes is to read them.
Dump therefore *steals* them — ``pidfd_getfd`` duplicates the target's read
end into the dumper, ``FIONREAD`` says how much is buffered, the dumper reads
exactly that — and immediately writes them back through a duplicate of the
target's write end, before the target resumes.  The target, frozen all along,
sees the same bytes in the same order (message boundaries of O_DIRECT
"packet" pipes are not kept).  Only a pipe with no end outside the process may
be handled so: with an outside writer or reader the bytes would be shared with
someone else, and :mod:`ckpt.resources.files` refuses it before we get here.

Restore creates the pipe inside the target (``pipe2``, or for a FIFO an
``O_RDWR`` open of its path that neither blocks nor lets the FIFO go away
while the ends are opened), sets the capacity, writes the bytes from outside
through ``pidfd_getfd`` of the new write end, then sets each end's status
flags (O_NONBLOCK, O_DIRECT) — after the write, so our blocking write cannot
fail with EAGAIN.
"""

from __future__ import annotations

import fcntl
import os
import stat
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..control.inject import Injector, Scratch
from ..errors import CkptError, RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import pidfd_getfd, pidfd_open
from .fdkind import FdDump, FdKind, Opener

__all__ = ["PIPE_DEFAULT_CAPACITY", "PIPE_KIND", "FIFO_KIND", "steal_and_put_back", "PipeRestorer"]

#: F_GETPIPE_SZ of a new pipe (16 pages).
PIPE_DEFAULT_CAPACITY = 65536
_SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000  # + O_ASYNC


@contextmanager
def _borrowed(pidfd: int, fd: int) -> Iterator[int]:
    """A duplicate of the target's ``fd`` in our process, closed after the block."""
    ours = pidfd_getfd(pidfd, fd)
    try:
        yield ours
    finally:
        os.close(ours)


def _read_exactly(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def steal_and_put_back(pid: int, read_fd: int, write_fd: int, *, write_pid: int | None = None) -> tuple[bytes, int]:
    """(buffered bytes, capacity) of the pipe behind the target's ``read_fd``/``write_fd``; the bytes stay in it.

    ``write_pid``: the process holding ``write_fd`` when it is not ``pid`` (a pipe between two processes).
    """
    pidfd = pidfd_open(pid)
    wpidfd = pidfd_open(write_pid) if write_pid not in (None, pid) else pidfd
    try:
        with _borrowed(pidfd, read_fd) as r, _borrowed(wpidfd, write_fd) as w:
            capacity = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
            size = int.from_bytes(fcntl.ioctl(r, termios.FIONREAD, bytes(4)), "little")
            if not size:
                return b"", capacity
            data = b""
            try:
                data = _read_exactly(r, size)
            finally:
                if data:
                    try:
                        _write_all(w, data)
                    except OSError as exc:  # the bytes exist only in `data` now: say so loudly
                        raise CkptError(f"process {pid}: could not put {len(data)} bytes back into the pipe of "
                                        f"fds {read_fd}/{write_fd}: {exc}; the target lost them") from exc
            if len(data) != size:
                raise CkptError(f"process {pid}: pipe of fd {read_fd} held {size} bytes but {len(data)} were read")
            return data, capacity
    finally:
        os.close(pidfd)
        if wpidfd != pidfd:
            os.close(wpidfd)


@dataclass
class PipeRestorer:
    """Creates each pipe once, in the target, and hands out its ends as the entries ask for them."""

    inj: Injector
    scratch: Scratch
    warnings: list[str]
    #: pipe_id → {"r": temp fd, "w": temp fd} not yet claimed by an entry.
    ends: dict[int, dict[str, int]] = field(default_factory=dict)
    #: FIFO pipe_id → the O_RDWR keeper fd, closed by :meth:`close`.
    keepers: dict[int, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    #: Keepers are moved to this fd number or above, clear of every number the image uses.
    high: int = 0
    #: FIFO pipe_ids whose bytes and capacity this process restores (in a tree, one process per FIFO).
    fill_fifos: set[int] = field(default_factory=set)

    def open(self, entry: files_pb2.FileEntry) -> int:
        """A temporary fd of ``entry``'s end in the target (status flags already set)."""
        p = entry.pipe
        if entry.kind == files_pb2.FileEntry.FIFO:
            fd = self._open_fifo(entry)
        else:
            if p.pipe_id not in self.ends:
                self._create(entry)
            end = "w" if entry.flags & os.O_ACCMODE == os.O_WRONLY else "r"
            fd = self.ends[p.pipe_id].pop(end, None)
            if fd is None:
                raise RestoreError(f"pipe {p.pipe_id}: two open files for its {end} end are not supported")
        self.inj.call(NR.fcntl, fd, fcntl.F_SETFL, entry.flags & _SETFL_MASK, name=f"fcntl({fd}, F_SETFL)")
        return fd

    def _create(self, entry: files_pb2.FileEntry) -> None:
        p = entry.pipe
        self.inj.call(NR.pipe2, self.scratch.addr, os.O_CLOEXEC, name="pipe2")
        raw = self.scratch.read(0, 8)
        r, w = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        self.ends[p.pipe_id] = {"r": r, "w": w}
        self._fill(p, w)

    def _open_fifo(self, entry: files_pb2.FileEntry) -> int:
        p = entry.pipe
        if p.pipe_id not in self.keepers:
            low = self._openat(entry.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            keeper = self.inj.call(NR.fcntl, low, fcntl.F_DUPFD_CLOEXEC, self.high, name="fcntl(F_DUPFD_CLOEXEC)")
            self.inj.close(low)
            self.keepers[p.pipe_id] = keeper
            if p.pipe_id in self.fill_fifos:  # this process puts the bytes back (in a tree: one of them does)
                if self._queued(keeper):  # another process holds the FIFO open: our bytes would double its
                    raise RestoreError(f"the FIFO {entry.path!r} already holds data: another process has it open",
                                       hint="the dumped process must be gone (or the FIFO unused) before restoring")
                self._fill(p, keeper)
        flags = entry.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY) | os.O_CLOEXEC
        return self._openat(entry.path, flags)

    def _queued(self, fd: int) -> int:
        pidfd = pidfd_open(self.inj.pid)
        try:
            with _borrowed(pidfd, fd) as ours:
                return int.from_bytes(fcntl.ioctl(ours, termios.FIONREAD, bytes(4)), "little")
        finally:
            os.close(pidfd)

    def _openat(self, path: str, flags: int) -> int:
        raw = os.fsencode(path) + b"\0"
        self.scratch.write(0, raw)
        try:
            return self.inj.call(NR.openat, -100, self.scratch.addr, flags, 0, name=f"openat({path!r})")
        except OSError as exc:
            raise RestoreError(f"cannot open the FIFO {path!r}: {exc.strerror}") from exc

    def _fill(self, p: files_pb2.Pipe, wfd: int) -> None:
        if p.capacity and p.capacity != PIPE_DEFAULT_CAPACITY:
            try:
                self.inj.call(NR.fcntl, wfd, fcntl.F_SETPIPE_SZ, p.capacity, name="fcntl(F_SETPIPE_SZ)")
            except OSError as exc:
                self.warnings.append(f"pipe {p.pipe_id}: capacity {p.capacity} not set ({exc.strerror})")
        data = self.data.get(p.pipe_id, b"")
        if data:
            pidfd = pidfd_open(self.inj.pid)
            try:
                with _borrowed(pidfd, wfd) as w:
                    _write_all(w, data)
            finally:
                os.close(pidfd)

    def close(self) -> None:
        """Close the FIFO keepers and any end no entry claimed."""
        leftovers = list(self.keepers.values()) + [fd for ends in self.ends.values() for fd in ends.values()]
        for fd in leftovers:
            self.inj.close(fd)
        self.keepers.clear()
        self.ends.clear()


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Which pipe this end is on; its bytes are read once every end in the tree is known (ckpt.resources.files)."""
    entry.pipe.pipe_id = d.o.st.st_ino


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    return r.pipes.open(entry)


PIPE_KIND = FdKind(files_pb2.FileEntry.PIPE, lambda o: o.link.startswith("pipe:["), dump, restore)
FIFO_KIND = FdKind(files_pb2.FileEntry.FIFO, lambda o: stat.S_ISFIFO(o.st.st_mode), dump, restore)
