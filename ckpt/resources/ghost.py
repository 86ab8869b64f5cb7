"""Deleted ("ghost") files, directories and FIFOs that a tree still reaches: dumped once per inode, recreated once.

A file unlinked while it is open or mapped lives on with no name (``nlink``
0): /proc shows it as ``PATH (deleted)`` in fd links, in maps and as a cwd.
Typical: a temporary file opened then unlinked, a library a package upgrade
replaced while a server runs (maps shows the old one as deleted and the new
one is at its path), a working directory removed under a shell, a FIFO
unlinked once both ends were open.  One inode may be reached many ways —
two open() calls, a fork, an fd and a mapping, several processes — and must
come back as one inode again: a write through one fd is seen through the
other and through a shared mapping.

Dump: :func:`record` makes the :class:`Ghost` record of an inode (its
``dev``/``ino`` say which records are the same inode), repeated in every
record that reaches it: a FileEntry (:func:`dump_fd`, which the files registry
asks about every descriptor), a Vma and a deleted executable
(:mod:`ckpt.resources.memory`), a cwd or root (:func:`dump_dir`).  A deleted
device node, or a file removed under one name but linked under another, is
refused: it could not be made again as it was.  A regular
file's content is stored once, as the pages of owner ``ghost-<dev>-<ino>``
with file offsets as addresses, only its data ranges (SEEK_DATA/SEEK_HOLE):
a hole stays a hole, and ``--deleted-max`` limits the bytes of data, not the
apparent size (a 10 GiB sparse file with 4 KiB of data is 4 KiB).  The dump
reads through ``/proc/PID/fd/N`` or ``/proc/PID/map_files/…`` with O_NOATIME,
so the original's atime is not touched.  Mode, owner, atime and mtime are
recorded from the frozen tree.

Restore: :class:`GhostObjects` recreates each inode once, on first use (a
descriptor, a mapping, a chdir): made under a temporary name in its old
directory (else /tmp), filled — data ranges written, ZERO pages written as
zeros (they were data), holes left — cut to its size, given its mode and
owner, then unnamed so that it is ``PATH (deleted)`` again: renamed to its
old name and unlinked there, or, when a file now has that name (the upgraded
library), swapped with it (RENAME_EXCHANGE) and overwritten by it, which
leaves the ghost unlinked under the old name and the new file where it was
(for that instant the path names the old content; its ctime changes).  The
restorer keeps a descriptor of each ghost; every process's descriptors and
mappings open that one (``/proc/<restorer>/fd/N``).  :meth:`GhostObjects.finish`
sets atime and mtime last, once every process has its mappings (mmap
touches the atime).  A file made with O_TMPFILE (never linked: its name is
``DIR/#INO``) is made again that way by the restorer, with the status flags of
the one open file that made it (only that one has the flag in its f_flags):
that open file itself is handed to its process (``pidfd_getfd``) whenever it
comes, before or after the file's other descriptors and mappings.

Not kept: the inode number, and the name if neither its directory nor a
rename there can be had (then a temporary name in /tmp; maps shows that name,
and the self-check refuses a mapped one).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import common_pb2, files_pb2
from ..image.records import PageState
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.fileio import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from .fdkind import DumpOptions, Opener
from .memfd import data_ranges, open_unseen

__all__ = ["DELETED_MAX", "FEATURE", "OWNER", "Ghost", "owner_of", "is_deleted", "name_of", "size_text", "record",
           "dump_fd", "dump_dir", "restore", "GhostObjects", "creators", "fill_from_image", "fill_from_bytes"]

Ghost = common_pb2.Ghost
#: Most data (bytes of its data ranges) of a deleted file a dump stores (--deleted-max).
DELETED_MAX = DumpOptions.deleted_max
#: The image feature (ckpt.image.compat) an image with ghosts requires of its reader.
FEATURE = "ghost-files"
#: Page owner of a ghost's content.
OWNER = "ghost-{dev:x}-{ino}"
_DELETED = " (deleted)"
_AT_FDCWD = -100 & ((1 << 64) - 1)
#: O_TMPFILE (__O_TMPFILE | O_DIRECTORY): stays in the f_flags of the descriptor that made the file.
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO"}
_ZEROS = bytes(1 << 20)
#: Errors that say "not here": try the next place to make a ghost.
_NOT_HERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                       errno.EOPNOTSUPP, errno.EISDIR, errno.EXDEV})


def owner_of(dev: int, ino: int) -> str:
    return OWNER.format(dev=dev, ino=ino)


def is_deleted(link: str, st: os.stat_result) -> bool:
    """``link`` (a /proc fd, cwd or root link) names an inode with no name left (a file really named
    "x (deleted)" has links)."""
    return link.endswith(_DELETED) and st.st_nlink == 0


def name_of(link: str) -> str:
    """The path a deleted inode had (`` (deleted)`` removed)."""
    return link[:-len(_DELETED)] if link.endswith(_DELETED) else link


def size_text(n: int) -> str:
    """The smallest whole M (or K) at least ``n`` bytes, as --deleted-max takes it."""
    return f"{-(-n // (1 << 20))}M" if n >= 1 << 20 else f"{-(-n // 1024)}K"


# --- dump -----------------------------------------------------------------------------------------

def _data_bytes(ranges: Iterable[tuple[int, int]]) -> int:
    """Bytes the image stores for these data ranges: whole pages (see memfd.read_content)."""
    total = done = 0
    for start, end in ranges:
        start = max(start - start % PAGE_SIZE, done)
        end = -(-end // PAGE_SIZE) * PAGE_SIZE
        if end > start:
            total += end - start
            done = end
    return total


def record(path: str, st: os.stat_result, *, name: str, where: str, limit: int = DELETED_MAX) -> common_pb2.Ghost:
    """The Ghost record of the inode ``path`` opens (a /proc link) as ``st`` saw it, known as ``name``
    (``DIR/#INO``: made with O_TMPFILE, the kernel's name for a file that never had one).

    Unsupported naming ``where`` ("process P: fd N", "process P: the mapping at …") for what cannot be
    recreated: another type of inode (a device node, a socket), or a file with more data than ``limit``.
    """
    kind = stat.S_IFMT(st.st_mode)
    if kind not in _KINDS:
        raise Unsupported(f"{where} is {name!r}, a deleted inode of mode {st.st_mode:o}, which ckpt cannot make "
                          "again", hint="let the program close it, or dump before it is deleted")
    g = Ghost(dev=st.st_dev, ino=st.st_ino, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
              atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
              tmpfile=kind == stat.S_IFREG and os.path.basename(name) == f"#{st.st_ino}")
    if kind == stat.S_IFREG:
        g.owner, g.size = owner_of(st.st_dev, st.st_ino), st.st_size
        fd = open_unseen(path)
        try:
            g.data_bytes = _data_bytes(data_ranges(fd, st.st_size))
        finally:
            os.close(fd)
        if g.data_bytes > limit:
            raise Unsupported(f"{where} is the deleted file {name} of {st.st_size} bytes ({g.data_bytes} bytes of "
                              f"data, more than the {limit} bytes ckpt saves)",
                              hint=f"raise the cap with --deleted-max (e.g. --deleted-max {size_text(g.data_bytes)})")
    return g


def dump_fd(entry: files_pb2.FileEntry, pid: int, fd: int, link: str, st: os.stat_result, limit: int) -> None:
    """Make the FileEntry of a descriptor on a deleted inode a ghost (``deleted`` and ``ghost`` set, a regular
    file's ``content`` naming its owner); leave any other alone.  Unsupported for a deleted inode that cannot
    be made again (a device node), and for one deleted under this name but linked under another (the
    restore could not find the other name)."""
    if not link.endswith(_DELETED) or link.startswith("/memfd:") or entry.tty:
        return
    where = f"process {pid}: fd {fd}"
    if st.st_nlink:
        if not stat.S_ISREG(st.st_mode) or _named(f"/proc/{pid}/root{link}", st):
            return  # a file really named "x (deleted)"; a directory is linked by "." while it lives
        raise Unsupported(f"{where} is {link}, removed under that name but still linked under another "
                          f"({st.st_nlink} links)", hint="the restore would not know its other name: reopen it "
                          "by that name, or dump before it is removed")
    entry.deleted = True
    entry.ghost.CopyFrom(record(f"/proc/{pid}/fd/{fd}", st, name=name_of(link), where=where, limit=limit))
    if entry.ghost.owner:
        entry.content.owner, entry.content.size = entry.ghost.owner, entry.ghost.size


def dump_dir(pid: int, which: str, link: str) -> common_pb2.Ghost | None:
    """The ghost of process ``pid``'s working or root directory (``which``: "cwd" or "root", ``link`` what
    /proc shows for it) if it was deleted; else None."""
    if not link.endswith(_DELETED):
        return None
    path = f"/proc/{pid}/{which}"
    st = os.stat(path)
    if st.st_nlink:
        return None  # a directory really named "x (deleted)"
    what = "working directory" if which == "cwd" else "root directory"
    return record(path, st, name=name_of(link), where=f"process {pid}: its {what}", limit=0)


def _named(path: str, st: os.stat_result) -> bool:
    """``path`` names the inode ``st`` describes."""
    try:
        here = os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)


# --- restore --------------------------------------------------------------------------------------

def creators(entries: Iterable[files_pb2.FileEntry]) -> dict[tuple[int, int], int]:
    """{(dev, ino): open flags} of the open files that made O_TMPFILE ghosts (for GhostObjects.creators)."""
    return {(e.ghost.dev, e.ghost.ino): e.flags for e in entries
            if e.HasField("ghost") and e.flags & O_TMPFILE == O_TMPFILE}


def fill_from_image(image: object) -> Callable[[common_pb2.Ghost, int], None]:
    """A filler for :class:`GhostObjects` writing a ghost's stored data from ``image`` (its newest image):
    HERE ranges as stored, ZERO ranges as zeros (data that was zeros), nothing where no range is (holes)."""
    owners = set(image.owners())  # type: ignore[attr-defined]

    def fill(g: common_pb2.Ghost, fd: int) -> None:
        if g.owner not in owners:
            return  # no data at all: all holes
        pm = image.pagemap(g.owner)  # type: ignore[attr-defined]
        for r in pm.ranges:
            if r.state is PageState.ZERO:
                _write_zeros(fd, r.vaddr, r.nr_pages * pm.page_size)
        for offset, data in image.iter_pages(g.owner):  # type: ignore[attr-defined]
            os.pwrite(fd, data, offset)
    return fill


def fill_from_bytes(content: Callable[[common_pb2.ContentRef], bytes]) -> Callable[[common_pb2.Ghost, int], None]:
    """A filler from a loader of whole contents (:meth:`ckpt.resources.files.FilesDump.content`): pages of
    zeros are left as holes."""
    def fill(g: common_pb2.Ghost, fd: int) -> None:
        data = memoryview(content(common_pb2.ContentRef(owner=g.owner, size=g.size)))
        for off in range(0, len(data), PAGE_SIZE):
            page = data[off:off + PAGE_SIZE]
            if page != _ZEROS[:len(page)]:
                os.pwrite(fd, page, off)
    return fill


def _write_zeros(fd: int, offset: int, n: int) -> None:
    while n > 0:
        k = min(n, len(_ZEROS))
        os.pwrite(fd, _ZEROS[:k], offset)
        offset, n = offset + k, n - k


def restore(r: Opener, e: files_pb2.FileEntry, fds: list[int]) -> int:
    """A new descriptor of the target on the ghost of ``e`` (its status flags and offset), made by its first
    user: a FIFO's ends and bytes as any FIFO's, opened through the restorer's copy."""
    if r.ghosts is None:
        raise RestoreError(f"the deleted file {e.path!r} needs the restore's ghosts")
    if e.kind == files_pb2.FileEntry.FIFO:
        at = files_pb2.FileEntry()
        at.CopyFrom(e)
        at.path = r.ghosts.path(e.ghost, e.path)
        return r.pipes.open(at)
    fd = r.ghosts.open_in(r.inj, r.s, e.ghost, e.path, e.flags & ~(os.O_NOCTTY | os.O_CLOEXEC))
    r.seek(fd, e)
    return fd

@dataclass
class GhostObjects:
    """The ghosts of a restore, each made once by its first user: {(dev, ino): the restorer's descriptor}.

    ``fill(ghost, fd)`` writes a regular file's stored data through ``fd``
    (:func:`fill_from_image`).  Call :meth:`finish` once every process has its
    descriptors and mappings, then :meth:`close`.
    """

    fill: Callable[[common_pb2.Ghost, int], None] | None = None
    #: (dev, ino) → the open flags of the descriptor that made an O_TMPFILE ghost (:func:`creators`).
    creators: dict[tuple[int, int], int] = field(default_factory=dict)
    held: dict[tuple[int, int], int] = field(default_factory=dict)
    made: dict[tuple[int, int], common_pb2.Ghost] = field(default_factory=dict)

    def path(self, g: common_pb2.Ghost, name: str) -> str:
        """A path opening the ghost (``/proc/<restorer>/fd/N``), made now if this is its first user."""
        key = (g.dev, g.ino)
        if key not in self.held:
            self.held[key] = self._make(g, name)
            self.made[key] = g
        return f"/proc/{os.getpid()}/fd/{self.held[key]}"

    def open_in(self, inj: Injector, s: Scratch, g: common_pb2.Ghost, name: str, flags: int) -> int:
        """A new descriptor of ``inj``'s process on the ghost, opened with ``flags`` (and O_CLOEXEC).

        With O_TMPFILE in ``flags`` (the open file that made it): the restorer's own open file, made
        with these flags, handed over (pidfd_getfd), so that it keeps them."""
        path = os.fsencode(self.path(g, name)) + b"\0"
        if flags & O_TMPFILE == O_TMPFILE:
            pidfd = inj.call(NR.pidfd_open, os.getpid(), 0, name="pidfd_open(restorer)")
            try:
                return inj.call(NR.pidfd_getfd, pidfd, self.held[(g.dev, g.ino)], 0,
                                name=f"pidfd_getfd(ghost {name!r})")
            finally:
                inj.close(pidfd)
        s.write(0, path)
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        return inj.call(NR.openat, _AT_FDCWD, s.addr, flags | os.O_CLOEXEC, 0, name=f"openat(ghost {name!r})")

    def finish(self) -> None:
        """atime and mtime as recorded, last: making, filling and mapping a ghost touch them."""
        for key, g in self.made.items():
            try:
                os.utime(self.held[key], ns=(g.atime_ns, g.mtime_ns))
            except OSError as exc:
                raise RestoreError(f"the deleted {_KINDS[stat.S_IFMT(g.mode)]} made again cannot have its times "
                                   f"back: {exc.strerror}") from exc

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()
        self.made.clear()

    # -- making one ---------------------------------------------------------------------------------

    def _make(self, g: common_pb2.Ghost, name: str) -> int:
        """The ghost made under a temporary name, filled, given its mode and owner, and unnamed; our fd."""
        kind = stat.S_IFMT(g.mode)
        if kind == stat.S_IFREG and g.tmpfile:
            flags = self.creators.get((g.dev, g.ino), os.O_RDWR) & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
            for where in dict.fromkeys((os.path.dirname(name) or "/", "/tmp")):
                try:
                    fd = os.open(where, flags | O_TMPFILE | os.O_CLOEXEC, 0o600)
                    break
                except OSError as exc:
                    if exc.errno not in _NOT_HERE:
                        raise
            else:
                raise RestoreError(f"no place to make the O_TMPFILE file {name!r} again")
            return self._set_up(fd, g, name)
        for where in dict.fromkeys((os.path.dirname(name) or "/", "/tmp")):
            tmp = os.path.join(where, f".ckpt-ghost-{os.getpid()}-{g.ino}")
            try:
                fd = _create(kind, tmp)
                break
            except OSError as exc:
                if exc.errno not in _NOT_HERE:
                    raise
        else:
            raise RestoreError(f"no place to make the deleted {_KINDS[kind]} {name!r} again")
        try:
            fd = self._set_up(fd, g, name)  # closed there if it fails
            try:
                if kind == stat.S_IFREG:  # kept read-only: a writer would stop it from being an exe (EACCES)
                    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                    os.close(fd)
                    fd = ro
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            try:
                (os.rmdir if kind == stat.S_IFDIR else os.unlink)(tmp)
            except OSError:
                pass
            raise
        try:
            _unname(tmp, name, kind)  # cleans up after itself: ``tmp`` may name another file meanwhile
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _set_up(self, fd: int, g: common_pb2.Ghost, name: str) -> int:
        """Content, size, owner and mode of a ghost just made (our ``fd``); closes it on failure."""
        try:
            if stat.S_ISREG(g.mode):
                if self.fill is None:
                    raise RestoreError(f"the content of the deleted file {name!r} was not handed to the restore")
                rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)  # ours may be O_APPEND
                try:
                    self.fill(g, rw)
                    os.ftruncate(rw, g.size)  # stored pages are whole: the last one may reach past the end
                finally:
                    os.close(rw)
            os.fchown(fd, g.uid, g.gid)
            os.fchmod(fd, stat.S_IMODE(g.mode))  # after fchown, which clears set-id bits
        except BaseException:
            os.close(fd)
            raise
        return fd


def _create(kind: int, path: str) -> int:
    """A new inode of ``kind`` at ``path`` (never an existing one), opened for us."""
    if kind == stat.S_IFREG:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if kind == stat.S_IFDIR:
        os.mkdir(path, 0o700)
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            os.rmdir(path)
            raise
    os.mkfifo(path, 0o600)
    try:  # read and write: opening does not wait for a peer
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except BaseException:
        os.unlink(path)
        raise


def _unname(tmp: str, name: str, kind: int) -> None:
    """Take the name ``tmp`` away from a ghost, leaving it deleted under ``name`` where that can be done.

    ``name`` free: renamed there, then removed.  A regular file there now (the upgraded library): the two
    are swapped (RENAME_EXCHANGE), and that file is renamed back over the ghost.  Else the ghost keeps the
    temporary name in its /proc links."""
    remove = os.rmdir if kind == stat.S_IFDIR else os.unlink
    if os.path.dirname(tmp) != os.path.dirname(name):
        remove(tmp)
        return
    try:
        renameat2(tmp, name, RENAME_NOREPLACE)
    except OSError as exc:
        if exc.errno != errno.EEXIST or kind != stat.S_IFREG:
            remove(tmp)
            return
    else:
        remove(name)
        return
    try:
        if not stat.S_ISREG(os.lstat(name).st_mode):
            raise OSError(errno.EEXIST, "not a regular file")
        renameat2(tmp, name, RENAME_EXCHANGE)
    except OSError:
        remove(tmp)
        return
    try:
        os.rename(tmp, name)  # the file of today takes its name back; the ghost is overwritten, unlinked
    except OSError as exc:
        try:
            renameat2(tmp, name, RENAME_EXCHANGE)  # put it back as it was
        except OSError:
            raise RestoreError(f"{name!r} is at {tmp!r} now, and the file made again at its name: {exc.strerror}",
                               hint=f"move {tmp!r} back to {name!r}") from exc
        remove(tmp)
