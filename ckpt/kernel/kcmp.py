"""kcmp(2): are two kernel objects of two processes the same one (include/uapi/linux/kcmp.h)?

Used from outside the target: ``kcmp(pid, pid, KCMP_FILE, fd1, fd2) == 0``
means both descriptors refer to one open file description (dup, fork,
SCM_RIGHTS), so they must share offset and flags after restore.  Needs
PTRACE_MODE_READ over both processes, which root has.
"""

from __future__ import annotations

import ctypes
import struct

from .arch_x86_64 import NR
from .libc import syscall

__all__ = [
    "KCMP_FILE", "KCMP_VM", "KCMP_FILES", "KCMP_FS", "KCMP_SIGHAND", "KCMP_IO", "KCMP_SYSVSEM",
    "KCMP_EPOLL_TFD", "kcmp", "same_file", "same_epoll_target",
]

KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7
#: struct kcmp_epoll_slot {__u32 efd; __u32 tfd; __u32 toff;}
_EPOLL_SLOT = struct.Struct("<III")


def kcmp(pid1: int, pid2: int, type_: int, idx1: int = 0, idx2: int = 0) -> int:
    """0 equal, 1 less, 2 greater, 3 not equal (an ordering of kernel pointers, not their values)."""
    return syscall(NR.kcmp, pid1, pid2, type_, idx1, idx2, name=f"kcmp({pid1}, {pid2}, {type_}, {idx1}, {idx2})")


def same_file(pid: int, fd1: int, fd2: int, pid2: int | None = None) -> bool:
    """Do ``fd1`` of ``pid`` and ``fd2`` of ``pid2`` (default: the same process) share one open file?"""
    return kcmp(pid, pid if pid2 is None else pid2, KCMP_FILE, fd1, fd2) == 0


def same_epoll_target(pid: int, fd: int, epoll_pid: int, efd: int, tfd: int, toff: int = 0) -> bool:
    """Is ``fd`` of ``pid`` the open file that epoll ``efd`` of ``epoll_pid`` watches as its ``toff``-th watch
    added under fd number ``tfd`` (KCMP_EPOLL_TFD, Linux 4.13)?  The watch outlives that number: it lives as
    long as its open file."""
    slot = ctypes.create_string_buffer(_EPOLL_SLOT.pack(efd, tfd, toff), _EPOLL_SLOT.size)
    return kcmp(pid, epoll_pid, KCMP_EPOLL_TFD, fd, ctypes.addressof(slot)) == 0
