"""File I/O calls Python's os module lacks."""

from __future__ import annotations

import ctypes
import os

from .libc import check, libc

__all__ = ["sync_file_range", "fsync_dir", "SYNC_FILE_RANGE_WAIT_BEFORE", "SYNC_FILE_RANGE_WRITE", "SYNC_FILE_RANGE_WAIT_AFTER"]

SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

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
