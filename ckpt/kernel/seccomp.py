"""seccomp(2) (include/uapi/linux/seccomp.h, linux/filter.h): names and values only.

The calls that install a mode or a filter act on the calling thread, so they
are injected into the target; reading a thread's filters is ptrace's
(:func:`ckpt.kernel.ptrace.seccomp_get_filter`).
"""

from __future__ import annotations

import ctypes

__all__ = [
    "SECCOMP_MODE_DISABLED", "SECCOMP_MODE_STRICT", "SECCOMP_MODE_FILTER",
    "SECCOMP_SET_MODE_STRICT", "SECCOMP_SET_MODE_FILTER",
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_NEW_LISTENER", "SECCOMP_FILTER_FLAG_TSYNC_ESRCH",
    "SECCOMP_RET_ACTION_FULL", "SECCOMP_RET_USER_NOTIF", "BPF_CLASS", "BPF_RET", "BPF_RVAL", "BPF_K",
    "SOCK_FILTER_SIZE", "sock_fprog", "returns",
]

# /proc/PID/status "Seccomp:" and prctl(PR_GET_SECCOMP)
SECCOMP_MODE_DISABLED = 0
SECCOMP_MODE_STRICT = 1
SECCOMP_MODE_FILTER = 2

# seccomp(2) operations
SECCOMP_SET_MODE_STRICT = 0
SECCOMP_SET_MODE_FILTER = 1

# SECCOMP_SET_MODE_FILTER flags
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1            # Linux 4.14; the one flag PTRACE_SECCOMP_GET_METADATA reports
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2     # Linux 4.17
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3   # Linux 5.0
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4    # Linux 5.7

# filter return values (the upper 16 bits are the action)
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000

# classic BPF (linux/bpf_common.h)
BPF_CLASS = 0x07
BPF_RET = 0x06
BPF_RVAL = 0x18
BPF_K = 0x00

#: sizeof(struct sock_filter): u16 code, u8 jt, u8 jf, u32 k.
SOCK_FILTER_SIZE = 8


class sock_fprog(ctypes.Structure):
    """struct sock_fprog: the program seccomp(SECCOMP_SET_MODE_FILTER) takes."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_uint64)]


def returns(program: bytes) -> list[tuple[bool, int]]:
    """Each return instruction of a classic BPF ``program``: (returns a constant, that constant)."""
    out = []
    for i in range(0, len(program) - SOCK_FILTER_SIZE + 1, SOCK_FILTER_SIZE):
        code = int.from_bytes(program[i:i + 2], "little")
        if code & BPF_CLASS == BPF_RET:
            out.append((code & BPF_RVAL == BPF_K, int.from_bytes(program[i + 4:i + 8], "little")))
    return out
