"""open_by_handle_at(2): reopen an inode from the file handle the kernel printed for it.

inotify's fdinfo names each watched inode by ``sdev``, ``ino`` and an
exportfs file handle (``fhandle-type``, ``f_handle``); no path.  Opening the
handle (needs CAP_DAC_READ_SEARCH) relative to any descriptor on a mount of
that filesystem gives a descriptor whose ``/proc/self/fd`` link is the
inode's path.  The mount descriptor must not be O_PATH (EBADF).  A
filesystem without export operations prints no handle, or one that gives
ESTALE/EOPNOTSUPP here.
"""

from __future__ import annotations

import ctypes
import os
import struct

from .arch_x86_64 import NR
from .libc import syscall

__all__ = ["MAX_HANDLE_SZ", "open_by_handle_at", "kernel_dev"]

MAX_HANDLE_SZ = 128
_HEADER = struct.Struct("Ii")  # struct file_handle: handle_bytes, handle_type, then the bytes


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int = os.O_PATH) -> int:
    """A new (close-on-exec) descriptor on the inode ``handle`` names, found through ``mount_fd``'s filesystem."""
    if len(handle) > MAX_HANDLE_SZ:
        raise ValueError(f"a file handle of {len(handle)} bytes (at most {MAX_HANDLE_SZ})")
    buf = ctypes.create_string_buffer(_HEADER.pack(len(handle), handle_type) + handle)
    return syscall(NR.open_by_handle_at, mount_fd, ctypes.addressof(buf), flags | os.O_CLOEXEC,
                   name=f"open_by_handle_at(type {handle_type}, {handle.hex()})")


def kernel_dev(sdev: int) -> tuple[int, int]:
    """(major, minor) of a kernel-internal dev_t (``s_dev`` as fdinfo prints it: major << 20 | minor)."""
    return sdev >> 20, sdev & 0xFFFFF
