"""userfaultfd(2): write-protect tracking of a range (include/uapi/linux/userfaultfd.h).

A userfaultfd acts on the memory of the process that *created* it, so for a
target the ``userfaultfd()`` call is injected and the descriptor taken with
``pidfd_getfd``; from then on the ioctls below work from our side (DESIGN §2).
``UFFD_FEATURE_WP_ASYNC`` (Linux 6.7) resolves write-protect faults in the
kernel; the written pages are then found with ``PAGEMAP_SCAN``
(:mod:`ckpt.kernel.pagemap`).  Debian 12's header predates bits 13 and up;
those values are from the kernel's own header (v6.7 / v6.8).
"""

from __future__ import annotations

import ctypes
import os

from .arch_x86_64 import NR
from .ioctl import _IOR, _IOWR, ioctl
from .libc import syscall

__all__ = [
    "uffdio_api", "uffdio_range", "uffdio_register", "uffdio_writeprotect",
    "UFFD_API", "UFFDIO", "UFFDIO_API", "UFFDIO_REGISTER", "UFFDIO_UNREGISTER", "UFFDIO_WRITEPROTECT",
    "_UFFDIO_REGISTER", "_UFFDIO_UNREGISTER", "_UFFDIO_WAKE", "_UFFDIO_COPY", "_UFFDIO_ZEROPAGE",
    "_UFFDIO_MOVE", "_UFFDIO_WRITEPROTECT", "_UFFDIO_CONTINUE", "_UFFDIO_POISON", "_UFFDIO_API",
    "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "UFFD_FEATURE_EVENT_FORK", "UFFD_FEATURE_EVENT_REMAP",
    "UFFD_FEATURE_EVENT_REMOVE", "UFFD_FEATURE_MISSING_HUGETLBFS", "UFFD_FEATURE_MISSING_SHMEM",
    "UFFD_FEATURE_EVENT_UNMAP", "UFFD_FEATURE_SIGBUS", "UFFD_FEATURE_THREAD_ID",
    "UFFD_FEATURE_MINOR_HUGETLBFS", "UFFD_FEATURE_MINOR_SHMEM", "UFFD_FEATURE_EXACT_ADDRESS",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "UFFD_FEATURE_WP_UNPOPULATED", "UFFD_FEATURE_POISON",
    "UFFD_FEATURE_WP_ASYNC", "UFFD_FEATURE_MOVE",
    "UFFDIO_REGISTER_MODE_MISSING", "UFFDIO_REGISTER_MODE_WP", "UFFDIO_REGISTER_MODE_MINOR",
    "UFFDIO_WRITEPROTECT_MODE_WP", "UFFDIO_WRITEPROTECT_MODE_DONTWAKE", "UFFD_USER_MODE_ONLY",
    "userfaultfd", "uffd_api", "register", "unregister", "writeprotect",
]

UFFD_API = 0xAA
UFFDIO = 0xAA  # ioctl type

# ioctl numbers (the _UFFDIO_* bit positions also index the returned ``ioctls`` masks)
_UFFDIO_REGISTER = 0x00
_UFFDIO_UNREGISTER = 0x01
_UFFDIO_WAKE = 0x02
_UFFDIO_COPY = 0x03
_UFFDIO_ZEROPAGE = 0x04
_UFFDIO_MOVE = 0x05       # Linux 6.8
_UFFDIO_WRITEPROTECT = 0x06
_UFFDIO_CONTINUE = 0x07
_UFFDIO_POISON = 0x08     # Linux 6.6
_UFFDIO_API = 0x3F

UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
#: Linux 6.4: write-protect markers also on never-populated anonymous ptes.
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14        # Linux 6.6
#: Linux 6.7: resolve WP faults in the kernel (no reader); pairs with PAGEMAP_SCAN.
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16          # Linux 6.8

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2

UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

#: userfaultfd(2) flag: only user-mode faults (usable without privilege).
UFFD_USER_MODE_ONLY = 1


class uffdio_api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64)]


UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, uffdio_api)
UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, uffdio_register)
# The kernel's header notes these two "should have been _IOW"; the number is what counts.
UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, uffdio_range)
UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, uffdio_writeprotect)

def userfaultfd(flags: int = os.O_CLOEXEC) -> int:
    """A userfaultfd for *this* process's memory (for a target, inject the call instead)."""
    return syscall(NR.userfaultfd, flags, name="userfaultfd")


def uffd_api(fd: int, features: int) -> tuple[int, int]:
    """Handshake (UFFDIO_API) asking for ``features``; returns ``(features, ioctls)`` granted.

    Allowed once per descriptor: a second call gives EINVAL.  With ``features=0``
    the kernel reports every feature it supports.
    """
    api = uffdio_api(UFFD_API, features, 0)
    ioctl(fd, UFFDIO_API, api, f"ioctl(UFFDIO_API, features={features:#x})")
    return api.features, api.ioctls


def register(fd: int, start: int, length: int, mode: int) -> int:
    """Register ``[start, start+length)`` with ``mode`` (UFFDIO_REGISTER_MODE_*); returns the ioctl mask.

    Fails with EINVAL on [vdso]/[vvar]/[vsyscall] and EPERM on read-only shared
    file mappings (DESIGN §2).
    """
    reg = uffdio_register(uffdio_range(start, length), mode, 0)
    ioctl(fd, UFFDIO_REGISTER, reg, f"ioctl(UFFDIO_REGISTER, {start:#x}+{length:#x}, mode={mode:#x})")
    return reg.ioctls


def unregister(fd: int, start: int, length: int) -> None:
    rng = uffdio_range(start, length)
    ioctl(fd, UFFDIO_UNREGISTER, rng, f"ioctl(UFFDIO_UNREGISTER, {start:#x}+{length:#x})")


def writeprotect(fd: int, start: int, length: int, mode: int = UFFDIO_WRITEPROTECT_MODE_WP) -> None:
    """Write-protect (``mode`` has MODE_WP) or un-protect (mode 0) a registered range."""
    wp = uffdio_writeprotect(uffdio_range(start, length), mode)
    ioctl(fd, UFFDIO_WRITEPROTECT, wp, f"ioctl(UFFDIO_WRITEPROTECT, {start:#x}+{length:#x}, mode={mode:#x})")
