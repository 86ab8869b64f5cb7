"""Resource limits and priorities (include/uapi/asm-generic/resource.h): prlimit64(2).

``prlimit64(pid, ...)`` works on another process when the caller's uids and
gids match the target's or it has CAP_SYS_RESOURCE; raising a hard limit
always needs CAP_SYS_RESOURCE (DESIGN §4: root here lacks it).
"""

from __future__ import annotations

import ctypes

from .arch_x86_64 import NR
from .libc import syscall

__all__ = [
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
    "RLIM_NLIMITS", "RLIM_INFINITY", "RLIMIT_NAMES", "PRIO_PROCESS", "PRIO_PGRP", "PRIO_USER",
    "rlimit64", "prlimit64",
]

RLIMIT_CPU = 0
RLIMIT_FSIZE = 1
RLIMIT_DATA = 2
RLIMIT_STACK = 3
RLIMIT_CORE = 4
RLIMIT_RSS = 5
RLIMIT_NPROC = 6
RLIMIT_NOFILE = 7
RLIMIT_MEMLOCK = 8
RLIMIT_AS = 9
RLIMIT_LOCKS = 10
RLIMIT_SIGPENDING = 11
RLIMIT_MSGQUEUE = 12
RLIMIT_NICE = 13
RLIMIT_RTPRIO = 14
RLIMIT_RTTIME = 15
RLIM_NLIMITS = 16
RLIM_INFINITY = (1 << 64) - 1

#: Resource number → name without the RLIMIT_ prefix.
RLIMIT_NAMES: dict[int, str] = {
    value: name[len("RLIMIT_"):] for name, value in dict(globals()).items()
    if name.startswith("RLIMIT_") and isinstance(value, int)
}

PRIO_PROCESS = 0
PRIO_PGRP = 1
PRIO_USER = 2


class rlimit64(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_uint64), ("rlim_max", ctypes.c_uint64)]


def prlimit64(pid: int, resource: int, new: tuple[int, int] | None = None) -> tuple[int, int]:
    """Read (and with ``new`` = (cur, max), set) a limit of ``pid``; returns the old (cur, max)."""
    old = rlimit64()
    newp = 0
    if new is not None:
        new_s = rlimit64(*new)
        newp = ctypes.addressof(new_s)
    syscall(NR.prlimit64, pid, resource, newp, ctypes.addressof(old),
            name=f"prlimit64({pid}, {RLIMIT_NAMES.get(resource, resource)})")
    return old.rlim_cur, old.rlim_max
