"""memfd: anonymous memory files (memfd_create), by descriptor and by mapping, shared by a tree as one object.

A memfd is a shmem inode with a name and seals.  Processes reach it through
descriptors (one open file, or several opened through /proc) and through
mappings (its VMA path is ``/memfd:NAME (deleted)``), and after fork several
processes share the one object: its bytes are stored once, under the page
owner ``memfd-INO``, by offset in the file, whoever reaches it and however.

Dump: a descriptor is a FileEntry of kind MEMFD (name, seals, the object's
inode, its size and content owner); a mapping is a file mapping whose
``content_owner`` is that owner (its private dirty pages are saved per process
like any private file mapping's).  The content is read once per object, from
a descriptor or a mapping (``/proc/PID/fd/N`` or ``/proc/PID/map_files/…``
both open the object itself), skipping holes with SEEK_DATA/SEEK_HOLE.

Restore: the first process that needs an object creates it inside itself
(``memfd_create`` with the old name, ``ftruncate``), the restorer takes a
duplicate (``pidfd_getfd``) and writes the content through it; every later
descriptor or mapping — in that process or another — opens the restorer's
duplicate through /proc (the same inode: one object again).  Each descriptor
is an open file with the status flags it had (O_APPEND, O_NONBLOCK,
O_NOATIME; O_DIRECT, which shmem takes only at open since Linux 6.6, never on
memfd_create's own file: such a descriptor is a reopen through /proc, as the
original was).  The object gets back its owner and permission bits before
any seal, so that F_SEAL_EXEC means what it meant (added to an executable
memfd it implies the write seals).  Seals are added last, once every process
has its mappings (F_SEAL_WRITE refuses writable shared ones, as it did for
the original).

memfd_create's flags are not readable, only what they leave: MFD_CLOEXEC is
the descriptor's FD_CLOEXEC; MFD_ALLOW_SEALING is F_GET_SEALS without
F_SEAL_SEAL (an object made without it reads F_SEAL_SEAL; made sealable and
given that seal, it reads the same); MFD_NOEXEC_SEAL (Linux 6.3) leaves mode
0666 and F_SEAL_EXEC, MFD_EXEC mode 0777: the mode and the seals are given
back.  MFD_HUGETLB is kept with its page size (:mod:`ckpt.resources.hugetlb`).  Not kept: seals of an
object only mapped, never held by a descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..control.inject import Injector, Scratch
from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.pidfd import dup_from
from . import hugetlb
from .fdkind import FdDump, FdKind, Opener

__all__ = ["PREFIX", "OWNER", "KIND", "owner_of", "name_of", "dump", "restore", "open_unseen", "data_ranges",
           "read_content", "MemfdObjects"]

#: How /proc shows a memfd: "/memfd:NAME (deleted)" (fd links and map paths alike).
PREFIX = "/memfd:"
_DELETED = " (deleted)"
#: Page owner of a memfd object's bytes.
OWNER = "memfd-{ino}"
_MFD_CLOEXEC = 0x0001
_MFD_ALLOW_SEALING = 0x0002
_F_ADD_SEALS = 1033
_F_GET_SEALS = 1034
_READ = 4 << 20
#: What an open of the object must not do again (create, truncate), and what every open adds anyway.
_NOT_KEPT = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | 0o100000  # O_LARGEFILE (64-bit: always)
#: The flags memfd_create's own open file has.
_FROM_CREATE = os.O_RDWR | os.O_CLOEXEC


def owner_of(ino: int) -> str:
    return OWNER.format(ino=ino)


def name_of(path: str) -> str:
    """The memfd_create name in a /proc path (``/memfd:NAME (deleted)`` → NAME)."""
    name = path[len(PREFIX):]
    return name[:-len(_DELETED)] if name.endswith(_DELETED) else name


# --- dump ---------------------------------------------------------------------------------------

def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Fill a MEMFD FileEntry from the target's descriptor (its seals read through /proc, nothing changes).

    Its bytes are stored once per object by the dump (``memfd-INO``), not here.
    """
    pid, fd, link, st = d.pid, d.fd, d.o.link, d.o.st
    entry.path = link[:-len(_DELETED)] if link.endswith(_DELETED) else link
    entry.memfd.name = name_of(link)
    entry.memfd.shmem_id = st.st_ino
    entry.memfd.uid, entry.memfd.gid = st.st_uid, st.st_gid
    ours = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        entry.memfd.seals = fcntl.fcntl(ours, _F_GET_SEALS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: created without MFD_ALLOW_SEALING, so no seals
            raise
    finally:
        os.close(ours)
    entry.content.owner, entry.content.size = owner_of(st.st_ino), st.st_size
    ours = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hugetlb.is_hugetlbfs(ours):  # MFD_HUGETLB: its files' block size is the huge page size
            entry.memfd.huge_page_size = st.st_blksize
    finally:
        os.close(ours)


def open_unseen(path: str) -> int:
    """``path`` opened for reading with O_NOATIME (our reads leave the target's atime as it was), or without
    it where the kernel refuses it (EPERM: not the file's owner and no CAP_FOWNER)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOATIME)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of every data range of the file ``fd`` below ``size`` (SEEK_DATA/SEEK_HOLE): what is
    not in one is a hole.  A filesystem without holes reports the whole file as one range."""
    off = 0
    while off < size:
        try:
            data_at = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but holes after off
                return
            raise
        if data_at >= size:
            return
        hole = min(os.lseek(fd, data_at, os.SEEK_HOLE), size)
        yield data_at, hole
        off = hole


def read_content(path: str) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of every populated part of the file behind ``path`` (a /proc fd or map_files
    link: a memfd, shared anonymous memory, a System V segment, a deleted file), skipping holes with
    SEEK_DATA/SEEK_HOLE; each piece is padded to whole pages.  Reading leaves the atime alone."""
    fd = open_unseen(path)
    done = 0  # pieces are whole pages: a range a filesystem does not start on a page starts at one
    try:
        for data_at, hole in data_ranges(fd, os.fstat(fd).st_size):
            data_at = max(data_at - data_at % PAGE_SIZE, done)
            while data_at < hole:
                n = min(hole - data_at, _READ)
                buf = os.pread(fd, n, data_at)
                yield data_at, buf.ljust(-(-len(buf) // PAGE_SIZE) * PAGE_SIZE, b"\0")
                data_at += n
                done = -(-data_at // PAGE_SIZE) * PAGE_SIZE
    finally:
        os.close(fd)


# --- restore ------------------------------------------------------------------------------------

def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """A descriptor on the restore's object of ``entry`` (created now by its first user), at its offset."""
    fd = r.memfds.open_in(r.inj, r.s, entry.content.owner, entry.memfd.name, entry.content.size, entry.flags,
                          entry.identity.mode)
    r.seek(fd, entry)
    return fd


@dataclass
class MemfdObjects:
    """The memfd objects of a restore, created once each: {owner: the restorer's duplicate}.

    ``fill(owner, fd)`` writes an object's stored bytes through ``fd`` (the
    image's pages of that owner).  Close with :meth:`close` after the seals.
    """

    fill: object = None  # Callable[[str, int], None]
    held: dict[str, int] = field(default_factory=dict)
    seals: dict[str, int] = field(default_factory=dict)
    #: {owner: (mode, uid, gid)} of each object a descriptor recorded (:meth:`learn`); uid None: not recorded.
    inodes: dict[str, tuple[int, int | None, int | None]] = field(default_factory=dict)
    #: {owner: huge page size} of each MFD_HUGETLB object a descriptor recorded.
    huge: dict[str, int] = field(default_factory=dict)

    def learn(self, entries: Iterable[files_pb2.FileEntry]) -> None:
        """The seals, mode and owner of every object the image's descriptors recorded."""
        for e in entries:
            if e.kind != files_pb2.FileEntry.MEMFD:
                continue
            if e.memfd.seals:
                self.seals[e.content.owner] = e.memfd.seals
            m = e.memfd
            if m.huge_page_size:
                self.huge[e.content.owner] = m.huge_page_size
            self.inodes[e.content.owner] = (e.identity.mode, m.uid if m.HasField("uid") else None,
                                            m.gid if m.HasField("gid") else None)

    def _set_inode(self, owner: str, ours: int, mode: int) -> None:
        """The new object's owner and permission bits as recorded (``mode``: a mapping's, when no descriptor
        recorded the object), before any seal: F_SEAL_EXEC on an executable memfd implies the write seals."""
        want, uid, gid = self.inodes.get(owner, (mode, None, None))
        st = os.fstat(ours)
        if uid is not None and gid is not None and (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(ours, uid, gid)
        if want and stat.S_IMODE(want) != stat.S_IMODE(st.st_mode):
            os.fchmod(ours, stat.S_IMODE(want))

    def open_in(self, inj: Injector, s: Scratch, owner: str, name: str, size: int, flags: int, mode: int = 0, *,
                huge: int = 0) -> int:
        """A new fd of ``inj``'s process on the object ``owner`` (O_CLOEXEC), an open file with ``flags``: the
        access mode and the status flags (O_APPEND, O_NONBLOCK, O_NOATIME, O_DIRECT …) a descriptor had.
        ``mode``: the object's st_mode as the caller's record has it (its permission bits are given back)."""
        flags = (flags & ~_NOT_KEPT) | os.O_CLOEXEC
        if owner in self.held:
            path = f"/proc/{os.getpid()}/fd/{self.held[owner]}"
            s.write(0, os.fsencode(path) + b"\0")
            return inj.call(NR.openat, -100 & ((1 << 64) - 1), s.addr, flags, 0, name=f"openat(memfd {name!r})")
        raw = name.encode(errors="surrogateescape")[:249] + b"\0"
        s.write(0, raw)
        huge = huge or self.huge.get(owner, 0)  # MFD_HUGETLB: its page size, from a mapping or a descriptor
        try:
            fd = inj.call(NR.memfd_create, s.addr, _MFD_CLOEXEC | _MFD_ALLOW_SEALING | hugetlb.memfd_flags(huge),
                          name=f"memfd_create({name!r})")
        except OSError as exc:
            if not huge:
                raise
            raise hugetlb.refusal(exc, size) from exc
        inj.call(NR.ftruncate, fd, size, name=f"ftruncate(memfd, {size})")
        ours = dup_from(inj.pid, fd)
        self.held[owner] = ours
        if self.fill is not None:
            self.fill(owner, ours)  # type: ignore[operator]
            os.ftruncate(ours, size)  # stored pages are whole: the last one may reach past the end
        self._set_inode(owner, ours, mode)
        if flags != _FROM_CREATE:  # memfd_create gives O_RDWR alone: reopen with the access and flags asked
            path = f"/proc/{os.getpid()}/fd/{ours}"
            s.write(0, os.fsencode(path) + b"\0")
            again = inj.call(NR.openat, -100 & ((1 << 64) - 1), s.addr, flags, 0, name=f"openat(memfd {name!r})")
            inj.close(fd)
            fd = again
        return fd

    def add_seals(self) -> None:
        """The recorded seals, once every mapping exists (F_SEAL_WRITE refuses writable shared ones)."""
        for owner, seals in self.seals.items():
            if seals and owner in self.held:
                try:
                    fcntl.fcntl(self.held[owner], _F_ADD_SEALS, seals)
                except OSError as exc:
                    raise RestoreError(f"memfd {owner}: seals {seals:#x} cannot be added again: {exc.strerror}") from exc

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()


KIND = FdKind(files_pb2.FileEntry.MEMFD, lambda o: o.link.startswith(PREFIX), dump, restore)
