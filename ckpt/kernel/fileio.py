"""File I/O calls Python's os module lacks."""

from __future__ import annotations

import ctypes
import os

from .arch_x86_64 import NR
from .libc import check, libc, syscall

__all__ = ["sync_file_range", "fsync_dir", "close_all_but", "renameat2", "SYNC_FILE_RANGE_WAIT_BEFORE",
           "SYNC_FILE_RANGE_WRITE", "SYNC_FILE_RANGE_WAIT_AFTER", "RENAME_NOREPLACE", "RENAME_EXCHANGE"]

SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
#: renameat2(2) flags (include/uapi/linux/fs.h).
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
_AT_FDCWD = -100

_sync_file_range = libc.sync_file_range
_sync_file_range.restype = ctypes.c_int
_sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def sync_file_range(fd: int, offset: int, nbytes: int, flags: int = SYNC_FILE_RANGE_WRITE) -> None:
    """sync_file_range(2): with SYNC_FILE_RANGE_WRITE alone, start writeback of the range and return.

    Not a durability guarantee (no metadata, no disk cache flush): fsync still
    does that, but finds most of the data already on its way.
    """
    ctypes.set_errno(0)
    check(_sync_file_range(fd, offset, nbytes, flags), f"sync_file_range(fd={fd}, {offset}, {nbytes})")


def fsync_dir(path: str) -> None:
    """fsync a directory, so the names created or renamed in it are on disk too."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_all_but(*keep: int) -> None:
    """Close every descriptor of this process but ``keep`` (close_range(2), Linux 5.9+).

    For a forked child of ckpt that must not hold its files, sockets and pipes
    open after ckpt is gone (an end of a pipe whose EOF someone waits for).
    """
    low = 0
    for fd in sorted(keep):
        if fd > low:
            syscall(NR.close_range, low, fd - 1, 0, name="close_range")
        low = fd + 1
    syscall(NR.close_range, low, 0xFFFFFFFF, 0, name="close_range")


def renameat2(old: str, new: str, flags: int) -> None:
    """renameat2(2) of two paths (relative to the cwd); OSError as the kernel says (EINVAL: a filesystem
    without the flag, EEXIST: RENAME_NOREPLACE found ``new``)."""
    syscall(NR.renameat2, _AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags,
            name=f"renameat2({old!r}, {new!r}, {flags})")
