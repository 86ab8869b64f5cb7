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
A pipe whose other end is closed (a read end whose writers are all gone, as a
process keeps after its launcher exited; a write end whose readers are gone)
is read the same way through an end of the missing kind that the dumper opens
for the moment through ``/proc/PID/fd/N`` (which opens the pipe itself, not a
copy: a new open file on it), :func:`steal_one_end`.

Restore creates the pipe inside the target (``pipe2``, or for a FIFO an
``O_RDWR`` open of its path that neither blocks nor lets the FIFO go away
while the ends are opened), sets the capacity, writes the bytes from outside
through ``pidfd_getfd`` of the new write end, then sets each end's status
flags (O_NONBLOCK, O_DIRECT) — after the write, so our blocking write cannot
fail with EAGAIN.  Each end is one open file; a pipe end open through
several (a program that reopened it through ``/proc/self/fd/N``) gets the
pipe2 end for the first entry of its access mode and, for every other entry, a
new open file made the same way, through ``/proc/self/fd/N`` in the target,
with its own access mode and flags.  An end no entry names (the other end was
closed at the dump) is closed once the pipe is filled: its readers see the
queued bytes and then end-of-file, its writers EPIPE.
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

__all__ = ["PIPE_DEFAULT_CAPACITY", "PIPE_KIND", "FIFO_KIND", "steal_and_put_back", "steal_one_end", "PipeRestorer"]

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


def _steal(r: int, w: int, where: str) -> tuple[bytes, int]:
    """(buffered bytes, capacity) of the pipe behind our ``r``/``w``, read and written back."""
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
                raise CkptError(f"{where}: could not put {len(data)} bytes back into the pipe: {exc}; "
                                "the target lost them") from exc
    if len(data) != size:
        raise CkptError(f"{where}: the pipe held {size} bytes but {len(data)} were read")
    return data, capacity


def steal_and_put_back(pid: int, read_fd: int, write_fd: int, *, write_pid: int | None = None) -> tuple[bytes, int]:
    """(buffered bytes, capacity) of the pipe behind the target's ``read_fd``/``write_fd``; the bytes stay in it.

    ``write_pid``: the process holding ``write_fd`` when it is not ``pid`` (a pipe between two processes).
    """
    pidfd = pidfd_open(pid)
    wpidfd = pidfd_open(write_pid) if write_pid not in (None, pid) else pidfd
    try:
        with _borrowed(pidfd, read_fd) as r, _borrowed(wpidfd, write_fd) as w:
            return _steal(r, w, f"process {pid}: fds {read_fd}/{write_fd}")
    finally:
        os.close(pidfd)
        if wpidfd != pidfd:
            os.close(wpidfd)


def steal_one_end(pid: int, fd: int) -> tuple[bytes, int]:
    """:func:`steal_and_put_back` for a pipe of which the tree holds only the read or only the write end
    (``fd`` of ``pid``).  Both ends used here are ours, opened for the moment through ``/proc/PID/fd/N``
    (non-blocking: the reader first, so that the writer finds one) and closed before the target resumes;
    the target's own open file and its flags are left alone."""
    path = f"/proc/{pid}/fd/{fd}"
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return _steal(r, w, f"process {pid}: fd {fd}")
        finally:
            os.close(w)
    finally:
        os.close(r)


@dataclass
class PipeRestorer:
    """Creates each pipe once, in the target, and hands out its ends as the entries ask for them."""

    inj: Injector
    scratch: Scratch
    warnings: list[str]
    #: pipe_id → {FileEntry id: temp fd} of its ends not yet claimed by their entry.
    ends: dict[int, dict[int, int]] = field(default_factory=dict)
    #: FIFO pipe_id → the O_RDWR keeper fd, closed by :meth:`close`.
    keepers: dict[int, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    #: Keepers are moved to this fd number or above, clear of every number the image uses.
    high: int = 0
    #: FIFO pipe_ids whose bytes and capacity this process restores (in a tree, one process per FIFO).
    fill_fifos: set[int] = field(default_factory=set)
    #: pipe_id → the entries (open files) of the image on that pipe, by id (:meth:`learn`).
    members: dict[int, list[files_pb2.FileEntry]] = field(default_factory=dict)

    def learn(self, entry: files_pb2.FileEntry) -> None:
        """Note a pipe or FIFO entry of the image: its bytes, and for a pipe the open files made with it."""
        if entry.pipe.data:
            self.data[entry.pipe.pipe_id] = bytes(entry.pipe.data)
        if entry.kind == files_pb2.FileEntry.PIPE:
            self.members.setdefault(entry.pipe.pipe_id, []).append(entry)

    def open(self, entry: files_pb2.FileEntry) -> int:
        """A temporary fd of ``entry``'s end in the target (status flags already set)."""
        p = entry.pipe
        if entry.kind == files_pb2.FileEntry.FIFO:
            fd = self._open_fifo(entry)
        else:
            if p.pipe_id not in self.ends:
                self._create(entry)
            fd = self.ends[p.pipe_id].pop(entry.id, None)
            if fd is None:
                raise RestoreError(f"pipe {p.pipe_id}: file {entry.id} is not one of its open files")
        self.inj.call(NR.fcntl, fd, fcntl.F_SETFL, entry.flags & _SETFL_MASK, name=f"fcntl({fd}, F_SETFL)")
        return fd

    def _create(self, entry: files_pb2.FileEntry) -> None:
        """pipe2, filled; the first read-only and the first write-only entry take its ends, every other entry
        (a second open file on an end, an O_RDWR one) a new open file on the pipe; an end no entry takes is
        closed (its other end was closed at the dump)."""
        p = entry.pipe
        self.inj.call(NR.pipe2, self.scratch.addr, os.O_CLOEXEC, name="pipe2")
        raw = self.scratch.read(0, 8)
        r, w = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        self._fill(p, w)
        members = sorted(self.members.get(p.pipe_id, [entry]), key=lambda e: e.id)
        takes: dict[int, int] = {}  # pipe2 end → entry id
        for e in members:
            takes.setdefault({os.O_RDONLY: r, os.O_WRONLY: w}.get(e.flags & os.O_ACCMODE, -1), e.id)
        takes.pop(-1, None)
        ends = {eid: fd for fd, eid in takes.items()}
        for e in members:
            if e.id not in ends:
                ends[e.id] = self._reopen(r, e.flags & os.O_ACCMODE)
        for fd in (r, w):
            if fd not in takes:
                self.inj.close(fd)
        self.ends[p.pipe_id] = ends

    def _reopen(self, fd: int, access: int) -> int:
        """Another open file on the pipe of the target's ``fd``, through /proc/self/fd (non-blocking, so that
        it opens whoever holds the other end; its own flags are set when its entry claims it)."""
        return self._openat(f"/proc/self/fd/{fd}", access | os.O_NONBLOCK | os.O_CLOEXEC, "pipe")

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

    def _openat(self, path: str, flags: int, what: str = "FIFO") -> int:
        raw = os.fsencode(path) + b"\0"
        self.scratch.write(0, raw)
        try:
            return self.inj.call(NR.openat, -100, self.scratch.addr, flags, 0, name=f"openat({path!r})")
        except OSError as exc:
            raise RestoreError(f"cannot open the {what} {path!r}: {exc.strerror}") from exc

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
