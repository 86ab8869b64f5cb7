"""Process file descriptors: pidfd_open(2), pidfd_getfd(2), pidfd_send_signal(2).

``pidfd_getfd`` is how the dumper takes a descriptor the target created for
it (the userfaultfd injected into the target, DESIGN §2); it needs
PTRACE_MODE_ATTACH_REALCREDS over the target, which root has.
"""

from __future__ import annotations

import ctypes
import os

from .arch_x86_64 import NR
from .libc import syscall

__all__ = ["PIDFD_NONBLOCK", "PIDFD_THREAD", "pidfd_open", "pidfd_getfd", "dup_from", "pidfd_send_signal"]

#: pidfd_open flag: the pidfd is non-blocking for waitid (Linux 5.10).
PIDFD_NONBLOCK = os.O_NONBLOCK
#: pidfd_open flag: refer to a thread, not a thread group (Linux 6.9).
PIDFD_THREAD = os.O_EXCL


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A new (close-on-exec) pidfd for ``pid``."""
    return syscall(NR.pidfd_open, pid, flags, name=f"pidfd_open({pid})")


def pidfd_getfd(pidfd: int, targetfd: int, flags: int = 0) -> int:
    """Duplicate descriptor ``targetfd`` of the process behind ``pidfd`` into ours (close-on-exec)."""
    return syscall(NR.pidfd_getfd, pidfd, targetfd, flags, name=f"pidfd_getfd(pidfd={pidfd}, fd={targetfd})")


def dup_from(pid: int, targetfd: int) -> int:
    """Descriptor ``targetfd`` of process ``pid`` duplicated into ours: pidfd_open, pidfd_getfd, close the pidfd."""
    pidfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, targetfd)
    finally:
        os.close(pidfd)


def pidfd_send_signal(pidfd: int, sig: int, info: bytes | None = None, flags: int = 0) -> None:
    """Send ``sig`` through ``pidfd``; ``info`` is an optional raw 128-byte siginfo_t."""
    if info is None:
        syscall(NR.pidfd_send_signal, pidfd, sig, 0, flags, name=f"pidfd_send_signal(pidfd={pidfd}, sig={sig})")
        return
    buf = ctypes.create_string_buffer(bytes(info), 128)
    syscall(NR.pidfd_send_signal, pidfd, sig, ctypes.addressof(buf), flags,
            name=f"pidfd_send_signal(pidfd={pidfd}, sig={sig})")
