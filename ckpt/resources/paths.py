"""Files reopened by their path: regular files, directories, character devices; and deleted regular files.

A regular file or directory is opened again at the path it had, and checked
to be the same file (size, mtime, build-id: :mod:`ckpt.resources.fileid`;
never by device and inode, which differ on another machine), at the offset it
had.  A character device is reopened only when it carries no state of its own
(:data:`SIMPLE_DEVICES`), or, for a terminal, when ``--shell-job`` says to
re-attach it to the restoring terminal.  A deleted regular file (or
directory, or FIFO) is a ghost (:mod:`ckpt.resources.ghost`, which the registry
asks about every descriptor); images from before ghosts have a deleted regular
file's whole content per open file, made again here under its old name (or a
temporary one), opened, and unlinked; one made with O_TMPFILE that way.
"""

from __future__ import annotations

import errno
import os
import stat
from types import MappingProxyType

from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import dup_from
from . import fileid, locks
from .fdkind import FdDump, FdKind, OpenFd, Opener

__all__ = ["SIMPLE_DEVICES", "DELETED", "REG_KIND", "DIR_KIND", "CHR_KIND", "is_tty", "open_flags"]

FileEntry = files_pb2.FileEntry

#: Character devices reopened by path: they carry no state of their own.
SIMPLE_DEVICES = MappingProxyType({(1, 3): "/dev/null", (1, 5): "/dev/zero", (1, 7): "/dev/full",
                                   (1, 8): "/dev/random", (1, 9): "/dev/urandom"})
_TTY_MAJORS = frozenset({4, *range(136, 144)})   # vt/serial, and Unix98 pty slaves
_TTY_DEVICES = frozenset({(5, 0), (5, 1)})       # /dev/tty, /dev/console
#: What /proc appends to the link of a file whose last name was removed.
DELETED = " (deleted)"
_OPEN_IGNORED = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC
#: O_TMPFILE (__O_TMPFILE | O_DIRECTORY) stays in f_flags of a file made that way (Python's
#: tempfile.TemporaryFile, pytest's capture files): reopening its recreated copy with it gives ENOTDIR.
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_AT_FDCWD = -100


def is_tty(o: OpenFd) -> bool:
    rdev = (os.major(o.st.st_rdev), os.minor(o.st.st_rdev))
    return stat.S_ISCHR(o.st.st_mode) and (rdev[0] in _TTY_MAJORS or rdev in _TTY_DEVICES)


def open_flags(e: FileEntry) -> int:
    """The flags that open the entry's file again as it was: its status flags, never creating or truncating."""
    flags = (e.flags & ~_OPEN_IGNORED) | os.O_CLOEXEC
    if flags & _O_TMPFILE == _O_TMPFILE:
        flags &= ~_O_TMPFILE
    return flags


# --- dump -----------------------------------------------------------------

def _dump_reg(d: FdDump, e: FileEntry) -> None:
    o = d.o
    if not o.link.endswith(DELETED):
        try:  # the file the descriptor holds, not what the path names now
            if locks.leased(o.info.locks):  # opened anew, the file would break the lease: read through the target's
                mine = dup_from(d.pid, o.fd)
                try:
                    e.identity.build_id = fileid.BUILD_IDS.of_fd(mine)
                finally:
                    os.close(mine)
            else:
                e.identity.build_id = fileid.BUILD_IDS.of_path(f"/proc/{d.pid}/fd/{o.fd}", e.path)[1]
        except OSError:
            pass  # unreadable to us (not root): checked by size and mtime


def _dump_dir(d: FdDump, e: FileEntry) -> None:
    """Nothing but its path (the registry records it)."""


def _dump_chr(d: FdDump, e: FileEntry) -> None:
    rdev = (os.major(d.o.st.st_rdev), os.minor(d.o.st.st_rdev))
    if is_tty(d.o):
        if not d.opts.policy.shell_job:
            raise d.refuse(f"the terminal {d.o.link}", "use --shell-job to re-attach it to the restoring terminal")
        e.tty = True
    elif rdev not in SIMPLE_DEVICES:
        raise d.refuse(f"the character device {d.o.link} ({rdev[0]}:{rdev[1]})")


# --- restore --------------------------------------------------------------

def _by_path(r: Opener, e: FileEntry, fds: list[int]) -> int:
    fd = r.openat(e.path, open_flags(e), "file")
    r.check_same(e, fd)
    if e.kind != FileEntry.CHR:
        r.seek(fd, e)
    return fd


def _restore_reg(r: Opener, e: FileEntry, fds: list[int]) -> int:
    if not e.deleted:  # (a deleted file with a ghost record never comes here: ckpt.resources.ghost)
        return _by_path(r, e, fds)
    if e.flags & _O_TMPFILE == _O_TMPFILE:
        return _open_tmpfile(r, e, open_flags(e))
    return _open_deleted(r, e, open_flags(e))


def _restore_chr(r: Opener, e: FileEntry, fds: list[int]) -> int:
    if e.tty:
        return r.openat(r.policy.terminal(), open_flags(e) | os.O_NOCTTY, "the terminal")
    return _by_path(r, e, fds)


def _open_deleted(r: Opener, e: FileEntry, flags: int) -> int:
    """An image from before ghosts: recreate the content under its old name (else a temporary one), open it in the target, unlink it."""
    data = r.content(e.content)
    mode = e.identity.mode & 0o7777 or 0o600
    for path in (e.path, os.path.join(os.path.dirname(e.path), f".ckpt-deleted-{e.id}-{os.getpid()}"),
                 f"/tmp/.ckpt-deleted-{e.id}-{os.getpid()}"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            break
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOENT, errno.EACCES, errno.EROFS):
                raise
    else:
        raise RestoreError(f"no place to recreate the deleted file {e.path!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tfd = r.openat(path, flags, "the recreated deleted file")
    finally:
        os.unlink(path)
    r.seek(tfd, e)
    return tfd


def _open_tmpfile(r: Opener, e: FileEntry, flags: int) -> int:
    """A file made with O_TMPFILE and never linked (Python's TemporaryFile): made again that way, in its
    directory (else /tmp), so that it has no name at any moment and its flags are the ones it had."""
    data = r.content(e.content)
    mode = e.identity.mode & 0o7777 or 0o600
    for where in dict.fromkeys((os.path.dirname(e.path) or "/", "/tmp")):
        r.s.write(0, os.fsencode(where) + b"\0")
        try:
            tfd = r.inj.call(NR.openat, _AT_FDCWD, r.s.addr, flags | _O_TMPFILE, mode,
                             name=f"openat({where!r}, O_TMPFILE)")
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EROFS, errno.EOPNOTSUPP, errno.EISDIR):
                raise
    else:
        raise RestoreError(f"no place to recreate the O_TMPFILE file {e.path!r}")
    with open(f"/proc/{r.inj.pid}/fd/{tfd}", "r+b", buffering=0) as f:  # the same inode, through its descriptor
        f.write(data)
        os.fchmod(f.fileno(), mode)  # not the helper's umask
    r.seek(tfd, e)
    return tfd


REG_KIND = FdKind(FileEntry.REG, lambda o: stat.S_ISREG(o.st.st_mode), _dump_reg, _restore_reg)
DIR_KIND = FdKind(FileEntry.DIR, lambda o: stat.S_ISDIR(o.st.st_mode), _dump_dir, _by_path)
CHR_KIND = FdKind(FileEntry.CHR, lambda o: stat.S_ISCHR(o.st.st_mode), _dump_chr, _restore_chr)
