"""clone3(2) (Linux 5.3; ``set_tid`` 5.5, ``cgroup`` 5.7) — include/uapi/linux/sched.h.

The restorer injects ``clone3`` into a helper to recreate a process or thread
with its old pid/tid (``set_tid``, root only; DESIGN §4): :func:`clone_args_bytes`
lays out the argument block for writing into target memory.  :func:`clone3`
calls it in *this* process (single-threaded: a child of ``os.fork()``), to
make the root's helper of a restore and to probe ``set_tid`` (``ckpt check``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from collections.abc import Sequence

from .arch_x86_64 import NR
from .libc import syscall

__all__ = [
    "CSIGNAL", "CLONE_VM", "CLONE_FS", "CLONE_FILES", "CLONE_SIGHAND", "CLONE_PIDFD", "CLONE_PTRACE",
    "CLONE_VFORK", "CLONE_PARENT", "CLONE_THREAD", "CLONE_NEWNS", "CLONE_SYSVSEM", "CLONE_SETTLS",
    "CLONE_PARENT_SETTID", "CLONE_CHILD_CLEARTID", "CLONE_DETACHED", "CLONE_UNTRACED",
    "CLONE_CHILD_SETTID", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER",
    "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_IO", "CLONE_CLEAR_SIGHAND", "CLONE_INTO_CGROUP",
    "CLONE_NEWTIME", "CLONE_ARGS_SIZE_VER0", "CLONE_ARGS_SIZE_VER1", "CLONE_ARGS_SIZE_VER2",
    "MAX_PID_NS_LEVEL", "clone_args", "clone_args_bytes", "clone3",
]

CSIGNAL = 0x000000FF  # exit signal mask of the legacy clone() flags word
CLONE_NEWTIME = 0x00000080
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_DETACHED = 0x00400000
CLONE_UNTRACED = 0x00800000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
CLONE_CLEAR_SIGHAND = 0x100000000  # clone3 only
CLONE_INTO_CGROUP = 0x200000000    # clone3 only

CLONE_ARGS_SIZE_VER0 = 64
CLONE_ARGS_SIZE_VER1 = 80  # + set_tid, set_tid_size
CLONE_ARGS_SIZE_VER2 = 88  # + cgroup
#: Longest ``set_tid`` array: one tid per pid-namespace level.
MAX_PID_NS_LEVEL = 32


class clone_args(ctypes.Structure):
    """``struct clone_args`` (all __aligned_u64; ``set_tid`` points to an array of pid_t)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
            "tls", "set_tid", "set_tid_size", "cgroup",
        )
    ]


def clone_args_bytes(
    flags: int,
    *,
    exit_signal: int = 0,
    pidfd: int = 0,
    child_tid: int = 0,
    parent_tid: int = 0,
    stack: int = 0,
    stack_size: int = 0,
    tls: int = 0,
    set_tid: Sequence[int] = (),
    cgroup: int = 0,
    at: int = 0,
) -> bytes:
    """``struct clone_args`` followed by its ``set_tid`` array, to be written at address ``at``.

    ``set_tid`` lists the wanted tid from the innermost pid namespace outwards;
    the array is placed right after the struct, so ``args.set_tid`` is
    ``at + sizeof(clone_args)``.  Pass ``CLONE_ARGS_SIZE_VER2`` as clone3's size.
    """
    if len(set_tid) > MAX_PID_NS_LEVEL:
        raise ValueError(f"set_tid has {len(set_tid)} entries; at most {MAX_PID_NS_LEVEL}")
    args = clone_args(
        flags=flags, pidfd=pidfd, child_tid=child_tid, parent_tid=parent_tid, exit_signal=exit_signal,
        stack=stack, stack_size=stack_size, tls=tls,
        set_tid=at + ctypes.sizeof(clone_args) if set_tid else 0, set_tid_size=len(set_tid), cgroup=cgroup,
    )
    return bytes(args) + struct.pack(f"<{len(set_tid)}i", *set_tid)


def clone3(flags: int = 0, exit_signal: int = signal.SIGCHLD, set_tid: Sequence[int] = ()) -> int:
    """clone3() in *this* process, fork-like (no new stack): the child's pid here, 0 in the child.

    Only from a single-threaded process (RuntimeError otherwise), such as a
    child of ``os.fork()``: the child is a raw copy of this one, run without
    fork handlers, with only the calling thread.  A copy of a multi-threaded
    interpreter can inherit another thread's request for the GIL, and its
    next bytecode then drops the GIL and waits for that thread to take it
    (CPython's drop_gil with FORCE_SWITCHING), for ever; and a lock another
    thread held (malloc's) stays held in it.  ``set_tid`` needs CAP_SYS_ADMIN;
    a taken pid gives EEXIST.  CLONE_PARENT needs ``exit_signal=0`` (the
    caller's own exit signal is used).
    """
    if flags & (CLONE_VM | CLONE_THREAD | CLONE_VFORK):
        raise ValueError("clone3() here is fork-like: CLONE_VM/THREAD/VFORK would share this stack")
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        raise RuntimeError(f"clone3() from a process with {threads} threads: its copy could hang; "
                           "call it in a child of os.fork()")
    tids = (ctypes.c_int * max(len(set_tid), 1))(*set_tid)
    args = clone_args(flags=flags, exit_signal=exit_signal,
                      set_tid=ctypes.addressof(tids) if set_tid else 0, set_tid_size=len(set_tid))
    return syscall(NR.clone3, ctypes.addressof(args), ctypes.sizeof(args),
                   name=f"clone3(flags={flags:#x}, set_tid={list(set_tid)})")
