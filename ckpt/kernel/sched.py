"""Scheduling attributes (include/uapi/linux/sched.h): policy, priority, CPU affinity.

Readable from outside for any thread (no permission check beyond the LSM);
setting them on another process needs CAP_SYS_NICE or the same euid, so the
restorer injects the setters instead.
"""

from __future__ import annotations

import ctypes

from .arch_x86_64 import NR
from .libc import libc, syscall

__all__ = [
    "SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_IDLE", "SCHED_DEADLINE",
    "SCHED_RESET_ON_FORK", "CPU_MASK_MAX", "sched_getaffinity", "sched_getcpu",
]

SCHED_OTHER = 0
SCHED_FIFO = 1
SCHED_RR = 2
SCHED_BATCH = 3
SCHED_IDLE = 5
SCHED_DEADLINE = 6
#: OR-ed into the policy by sched_getscheduler() when set.
SCHED_RESET_ON_FORK = 0x40000000
#: Bytes of affinity mask we offer the kernel (8192 CPUs); it answers with its own cpumask size.
CPU_MASK_MAX = 1024


def sched_getaffinity(tid: int) -> bytes:
    """The raw affinity mask of ``tid``, as long as the kernel's cpumask (bit n = CPU n)."""
    buf = ctypes.create_string_buffer(CPU_MASK_MAX)
    n = syscall(NR.sched_getaffinity, tid, CPU_MASK_MAX, ctypes.addressof(buf), name=f"sched_getaffinity({tid})")
    return buf.raw[:n]


_sched_getcpu = libc["sched_getcpu"]  # a private function object (argtypes of ``libc.x`` are shared)
_sched_getcpu.restype = ctypes.c_int
_sched_getcpu.argtypes = []


def sched_getcpu() -> int:
    """The CPU the calling thread runs on now (glibc reads it from rseq or the vDSO: no syscall)."""
    return _sched_getcpu()
