"""Task and mm ABI the restorer sets by injected syscalls: PR_SET_MM_MAP, rseq, sigaltstack.

include/uapi/linux/prctl.h (``struct prctl_mm_map``), include/uapi/linux/rseq.h,
include/uapi/asm-generic/signal.h (``stack_t``).  The prctl option numbers
themselves are in :mod:`ckpt.kernel.prctl`.
"""

from __future__ import annotations

import ctypes

__all__ = ["PR_SET_MM_MAP", "PR_SET_MM_MAP_SIZE", "prctl_mm_map", "RSEQ_FLAG_UNREGISTER", "SS_ONSTACK",
           "SS_DISABLE", "stack_t"]

#: PR_SET_MM sub-commands: only the MAP form works without CAP_SYS_RESOURCE (DESIGN §4).
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15

RSEQ_FLAG_UNREGISTER = 1

SS_ONSTACK = 1  # reported by sigaltstack(NULL, &old): the thread runs on it; never set
SS_DISABLE = 2


class stack_t(ctypes.Structure):
    """``stack_t`` of sigaltstack(2) on x86_64."""

    _fields_ = [("ss_sp", ctypes.c_uint64), ("ss_flags", ctypes.c_int32), ("_pad", ctypes.c_int32),
                ("ss_size", ctypes.c_uint64)]


class prctl_mm_map(ctypes.Structure):
    """``struct prctl_mm_map``: the mm_struct fields PR_SET_MM_MAP sets in one call (Linux 3.18)."""

    _fields_ = [
        *((name, ctypes.c_uint64) for name in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack",
            "arg_start", "arg_end", "env_start", "env_end", "auxv")),
        ("auxv_size", ctypes.c_uint32),
        ("exe_fd", ctypes.c_uint32),
    ]
