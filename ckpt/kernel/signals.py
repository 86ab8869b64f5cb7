"""Signal dispositions and siginfo (include/uapi/asm-generic/signal-defs.h, arch/x86/include/uapi/asm/signal.h).

The kernel's ``struct sigaction`` on x86_64 is not glibc's: it is
``{handler, flags, restorer, mask}``, 8 bytes each, with a 64-bit mask
(``rt_sigaction`` takes ``sigsetsize`` = 8).  ``siginfo_t`` is 128 bytes on every
architecture; the first three ints are ``si_signo``, ``si_errno``, ``si_code``.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "NSIG", "SIGSET_SIZE", "SIGINFO_SIZE", "SIGKILL", "SIGSTOP", "SIGTRAP", "SIGCHLD", "SIGRTMIN",
    "SIG_DFL", "SIG_IGN",
    "SA_NOCLDSTOP", "SA_NOCLDWAIT", "SA_SIGINFO", "SA_RESTORER", "SA_ONSTACK", "SA_RESTART",
    "SA_NODEFER", "SA_RESETHAND",
    "SI_USER", "SI_KERNEL", "SI_QUEUE", "SI_TIMER", "SI_MESGQ", "SI_ASYNCIO", "SI_SIGIO", "SI_TKILL",
    "kernel_sigaction", "sigbit", "siginfo_signo", "siginfo_code", "make_siginfo",
]

#: Number of signals (_NSIG): 1..64.
NSIG = 64
#: sizeof(sigset_t) as the kernel wants it in rt_sig* calls.
SIGSET_SIZE = 8
SIGINFO_SIZE = 128

SIGTRAP = 5
SIGKILL = 9
SIGCHLD = 17
SIGSTOP = 19
#: First real-time signal as the kernel numbers them (glibc reserves 32-34 and calls 35 SIGRTMIN).
SIGRTMIN = 32

SIG_DFL = 0
SIG_IGN = 1

SA_NOCLDSTOP = 0x00000001
SA_NOCLDWAIT = 0x00000002
SA_SIGINFO = 0x00000004
SA_RESTORER = 0x04000000
SA_ONSTACK = 0x08000000
SA_RESTART = 0x10000000
SA_NODEFER = 0x40000000
SA_RESETHAND = 0x80000000

# si_code values (include/uapi/asm-generic/siginfo.h); negative ones come from user space.
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_MESGQ = -3
SI_ASYNCIO = -4
SI_SIGIO = -5
SI_TKILL = -6


class kernel_sigaction(ctypes.Structure):
    """``struct sigaction`` as rt_sigaction(2) reads and writes it on x86_64 (32 bytes)."""

    _fields_ = [
        ("sa_handler", ctypes.c_uint64),
        ("sa_flags", ctypes.c_uint64),
        ("sa_restorer", ctypes.c_uint64),
        ("sa_mask", ctypes.c_uint64),
    ]


def sigbit(signo: int) -> int:
    """The bit of ``signo`` in a kernel sigset (bit n-1 is signal n)."""
    return 1 << (signo - 1)


def siginfo_signo(info: bytes) -> int:
    return int.from_bytes(info[0:4], "little", signed=True)


def siginfo_code(info: bytes) -> int:
    return int.from_bytes(info[8:12], "little", signed=True)


def make_siginfo(signo: int, code: int = SI_USER) -> bytes:
    """A zeroed siginfo with only signo and code: what the kernel reports for a
    pending signal that has no queue entry (collect_signal() in kernel/signal.c)."""
    return (signo.to_bytes(4, "little") + bytes(4) + code.to_bytes(4, "little", signed=True)).ljust(SIGINFO_SIZE, b"\0")
