"""Injected answers checked against what the kernel itself shows of the same state.

A dump asks the frozen target a few things only a call inside it answers.
Each such call is checked to be the very call ckpt loaded, entered from
ckpt's instruction (:mod:`ckpt.control.inject`, PTRACE_GET_SYSCALL_INFO), the
target's seccomp filters suspended and its rseq section hidden; where the
kernel also shows the answer elsewhere, the two must agree or the dump is
refused (TargetError naming the process, the call and what disagreed):

=========================  ==================================================
injected call              the kernel's own view, compared
=========================  ==================================================
rt_sigaction               SigCgt/SigIgn of /proc/PID/status (signals.py)
prctl(PR_GET_THP_DISABLE)  ``THP_enabled`` of /proc/PID/status
prctl(PR_GET_DUMPABLE)     the owner of /proc/PID/status (root's unless 1)
brk(0)                     which anonymous VMA maps calls ``[heap]``
PR_GET_MEMORY_MERGE        ``ksm_merge_any`` of ksm_stat (vmflags.py; the
                           call is made only where that line is missing)
=========================  ==================================================

The credentials the image records come from /proc and are compared again
once everything is read (:mod:`ckpt.resources.creds_check`).  What no /proc
file, regset or netlink answer shows (securebits, PR_GET_CHILD_SUBREAPER,
PR_GET_PDEATHSIG, PR_GET_MDWE, PR_GET_TSC, PR_MCE_KILL_GET, membarrier
registrations, a non-leader thread's timer slack, clear_child_tid,
sigaltstack, getitimer, timer_gettime) rests on the injection checks alone;
README "A hostile target" says what a lie there could achieve.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..control.seize import FrozenProcess
from ..errors import TargetError
from ..image.pb import process_pb2
from ..procfs.maps import Vma
from ..procfs.status import read_status_values
from . import creds_check

__all__ = ["check_dump", "check_flags", "check_brk"]

_SUID_DUMP_USER = 1


def _refuse(pid: int, call: str, what: str) -> None:
    raise TargetError(pid, f"process {pid}: the injected {call} answered {what}: refusing to record an answer "
                           "the process may have shaped")


def check_flags(pid: int, entry: process_pb2.ProcessEntry) -> None:
    """The prctl answers of ``entry.flags`` that /proc also shows (module doc)."""
    f = entry.flags
    thp = read_status_values(pid, "THP_enabled")[0]
    if thp == "0" and not f.thp_disabled:  # THP_enabled 0: MMF_DISABLE_THP (completely) is set
        _refuse(pid, "prctl(PR_GET_THP_DISABLE)", "0, but /proc status shows THP_enabled: 0")
    euid = entry.creds.euid
    same_userns = os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    if euid != 0 and same_userns:
        # task_dump_owner(): a file of /proc/PID (not the directory, which stays the euid's for ps) is
        # the euid's only while dumpable is SUID_DUMP_USER, else root's
        owner = os.stat(f"/proc/{pid}/status").st_uid
        if (owner == euid) != (f.dumpable == _SUID_DUMP_USER):
            _refuse(pid, "prctl(PR_GET_DUMPABLE)", f"{f.dumpable}, but /proc/{pid}/status is owned by uid {owner} "
                                                   f"(the process's euid is {euid})")


def check_brk(pid: int, brk: int, start_brk: int, vmas: Sequence[Vma]) -> None:
    """brk(0) against maps: an anonymous VMA is called ``[heap]`` exactly when it starts at or below brk and
    ends at or above start_brk (vma_is_initial_heap(), fs/proc/task_mmu.c)."""
    if brk < start_brk:
        _refuse(pid, "brk(0)", f"{brk:#x}, below start_brk {start_brk:#x} (/proc/{pid}/stat)")
    for v in vmas:
        anonymous = v.inode == 0 and (v.path in ("", "[heap]") or v.path.startswith("[anon:"))
        if not anonymous:
            continue
        heap = v.start <= brk and v.end >= start_brk
        if heap != (v.path == "[heap]"):
            _refuse(pid, "brk(0)", f"{brk:#x}, but maps calls {v.start:#x}-{v.end:#x} "
                                   f"{'[heap]' if v.path == '[heap]' else 'not [heap]'}")


def check_dump(proc: FrozenProcess, entry: process_pb2.ProcessEntry) -> None:
    """Everything a process's entry holds that the kernel shows too: credentials, seccomp, prctl flags."""
    creds_check.check_dump(proc, entry)
    check_flags(proc.pid, entry)
