"""File lock constants and ``struct flock`` (include/uapi/asm-generic/fcntl.h, x86_64).

Python's :mod:`fcntl` has the commands but no ``struct flock`` layout; an injected
``fcntl`` needs its bytes in the target's memory.
"""

from __future__ import annotations

import struct

__all__ = ["F_GETLK", "F_SETLK", "F_SETLKW", "F_OFD_GETLK", "F_OFD_SETLK", "F_OFD_SETLKW", "F_SETLEASE",
           "F_GETLEASE", "OFF_MAX", "F_RDLCK", "F_WRLCK", "F_UNLCK", "LOCK_SH", "LOCK_EX", "LOCK_NB", "LOCK_UN", "SEEK_SET",
           "FLOCK", "pack_flock", "unpack_flock"]

F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETLEASE, F_GETLEASE = 1024, 1025
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8
SEEK_SET = 0
#: The largest off_t: a lock's start and length are signed 64-bit.
OFF_MAX = (1 << 63) - 1

#: struct flock { short l_type; short l_whence; (4 bytes of padding) off_t l_start; off_t l_len; pid_t l_pid; } (32 bytes).
FLOCK = struct.Struct("<hh4xqqi4x")


def pack_flock(type_: int, start: int, length: int, whence: int = SEEK_SET, pid: int = 0) -> bytes:
    """The bytes of a ``struct flock`` (``l_pid`` must be 0 for the OFD commands)."""
    return FLOCK.pack(type_, whence, start, length, pid)


def unpack_flock(data: bytes) -> tuple[int, int, int, int, int]:
    """(l_type, l_whence, l_start, l_len, l_pid) of a ``struct flock``."""
    return FLOCK.unpack(data[:FLOCK.size])  # type: ignore[return-value]
