"""O_PATH descriptors: a place in the filesystem held without opening the file, reopened by path.

An O_PATH descriptor (``open(path, O_PATH)``) names a file, directory,
device, FIFO, socket file or — with O_NOFOLLOW — a symbolic link itself,
without opening it: nothing is read, no device is opened, and the kernel
keeps only O_PATH, O_NOFOLLOW, O_DIRECTORY and O_CLOEXEC of its flags.  So
it is dumped by its path and the identity of what is there (``stat`` through
``/proc/PID/fd/N`` reaches the inode itself, a symlink included) and
restored by ``openat(path, the same flags)``, checked like any reopened file
(:mod:`ckpt.resources.fileid`: a regular file by size and mtime, anything else
by its type).  Whatever the inode is, it is this kind: an O_PATH descriptor
of a FIFO or a device must not be opened as one.

Refused at dump: an O_PATH descriptor with no path to reopen (of a deleted
file, or of an object with no name, such as a pipe reached through
``/proc/PID/fd/N``).  fcntl refuses an owner on such a file (EBADF), so none
is read or set.
"""

from __future__ import annotations

import os

from ..image.pb import files_pb2
from .fdkind import FdDump, FdKind, Opener
from .paths import DELETED, open_flags

__all__ = ["O_PATH", "KIND", "is_opath", "dump", "restore"]

O_PATH = getattr(os, "O_PATH", 0o10000000)


def is_opath(flags: int) -> bool:
    return bool(flags & O_PATH)


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Check that the O_PATH descriptor can be reopened by its path (the registry recorded path, flags and the
    identity of the inode, a symlink's own)."""
    link = d.o.link
    if not link.startswith("/"):
        raise d.refuse(f"an O_PATH descriptor of {link}, which has no path to reopen")
    if link.endswith(DELETED):
        raise d.refuse(f"an O_PATH descriptor of the deleted file {link[:-len(DELETED)]}")


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """``openat(path, its O_PATH flags)``, checked like any file reopened by path (no offset: it has none)."""
    fd = r.openat(entry.path, open_flags(entry), "file")
    r.check_same(entry, fd)
    return fd


KIND = FdKind(files_pb2.FileEntry.PATH, lambda o: is_opath(o.info.flags), dump, restore)
