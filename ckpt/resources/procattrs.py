"""Process and thread attributes no other module holds: audit loginuid, membarrier registrations, MDWE,
and the per-thread prctl flags PR_SET_TSC, PR_MCE_KILL and PR_SET_SPECULATION_CTRL.

Dump (each only where the kernel lets it be read; what cannot be read is listed in the README's
prctl table, not guessed):

* ``/proc/PID/loginuid``.  The audit session id (``/proc/PID/sessionid``) cannot be set by anyone:
  writing a loginuid hands out a new one.  A process with a session id that is not ckpt's own
  (a restore run from the same login session inherits it) is refused unless ``--tolerate
  audit-session`` (:mod:`ckpt.tolerance`).
* membarrier: ``MEMBARRIER_CMD_QUERY`` lists the commands the kernel has, not what the process
  registered, and /proc shows no registration; but each private expedited command fails with
  EPERM in a process that did not register for it, so the command itself, injected, tells (a
  barrier among threads that are all frozen costs nothing).  The global expedited registration
  changes no call's answer: it cannot be read, and is not restored.
* ``PR_GET_MDWE`` (PR_SET_MEMORY_MERGE is :mod:`.vmflags`'s); per thread ``PR_GET_TSC`` and ``PR_MCE_KILL_GET``
  (injected), the speculation controls a thread set from its ``status`` ("thread mitigated" …),
  and PR_SET_IO_FLUSHER from its ``stat`` flags (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE): refused,
  since setting it needs CAP_SYS_RESOURCE.  Read from ckpt itself and refused when set: syscall user
  dispatch (PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG) and a core-scheduling cookie (PR_SCHED_CORE_GET).

Restore: the loginuid is written by the process itself (``/proc/self/loginuid`` only takes its
owner's write) before its threads exist, so they inherit it; the rest once they do, MDWE last
(it refuses later PROT_EXEC gains).  Each membarrier registration is checked by the same probe
afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..control.inject import OUT, Injector, Query, Scratch
from ..control.seize import FrozenProcess
from ..errors import RestoreError, Unsupported
from ..image.pb import process_pb2
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR
from ..kernel.libc import syscall
from ..kernel.prctl import (
    MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
    MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
    PR_GET_MDWE, PR_GET_TSC, PR_MCE_KILL, PR_MCE_KILL_DEFAULT, PR_MCE_KILL_GET,
    PR_MCE_KILL_SET, PR_SCHED_CORE, PR_SCHED_CORE_GET, PIDTYPE_PID, PR_SET_MDWE, PR_SET_SPECULATION_CTRL, PR_SET_TSC, PR_SPEC_DISABLE,
    PR_SPEC_ENABLE, PR_SPEC_FORCE_DISABLE, PR_SPEC_INDIRECT_BRANCH, PR_SPEC_STORE_BYPASS, PR_TSC_ENABLE,
)
from ..procfs.stat import read_task_stat
from ..procfs.status import read_status_values
from ..tolerance import lose
from ._scratch import scratch_for

__all__ = ["QUERIES", "THREAD_QUERIES", "UNSET", "dump", "restore_loginuid", "restore"]

#: ``(uid_t)-1``: no loginuid (and no session id) was ever set.
UNSET = 0xFFFFFFFF
_O_WRONLY = 0o1
_AT_FDCWD = (1 << 64) - 100  # -100 as a syscall argument
#: task_struct flags PR_SET_IO_FLUSHER sets (include/linux/sched.h).
_PF_MEMALLOC_NOIO, _PF_LOCAL_THROTTLE = 0x00080000, 0x00100000

MDWE = Query("prctl(PR_GET_MDWE)", NR.prctl, (PR_GET_MDWE, 0, 0, 0, 0))
#: (probe, the registration it proves): a private expedited command answers EPERM unless registered.
_MEMBARRIER = tuple(
    (Query(f"membarrier({cmd:#x})", NR.membarrier, (cmd, 0, 0)), reg) for cmd, reg in (
        (MEMBARRIER_CMD_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED),
        (MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE),
        (MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)))
TSC = Query("prctl(PR_GET_TSC)", NR.prctl, (PR_GET_TSC, OUT, 0, 0, 0), out=4)
MCE_KILL = Query("prctl(PR_MCE_KILL_GET)", NR.prctl, (PR_MCE_KILL_GET, 0, 0, 0, 0))
#: Asked of the main thread, and of every thread (a dump asks them of a tree at once: inject.ask_all).
QUERIES = (MDWE, *(q for q, _ in _MEMBARRIER))
THREAD_QUERIES = (TSC, MCE_KILL)

#: What a thread's status says after it set a speculation control itself (arch/x86/kernel/cpu/bugs.c).
_SPEC_SET = {"thread force mitigated": PR_SPEC_FORCE_DISABLE, "thread mitigated": PR_SPEC_DISABLE,
             "thread vulnerable": PR_SPEC_ENABLE}
_SPEC_LINES = (("Speculation_Store_Bypass", PR_SPEC_STORE_BYPASS, "spec_store_bypass"),
               ("SpeculationIndirectBranch", PR_SPEC_INDIRECT_BRANCH, "spec_indirect_branch"))


def _read_u32(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _answer(inj: Injector, q: Query, scratch: Scratch | None) -> int | None:
    """A query's result, None when the kernel refuses it (an option it does not have)."""
    try:
        result, out = inj.ask(q, scratch)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EPERM, errno.ENOSYS):
            return None
        raise
    return int.from_bytes(out, "little", signed=True) if q.out else result


def _membarrier(inj: Injector, scratch: Scratch | None) -> int:
    """The private expedited registrations of the process (their REGISTER command bits)."""
    return sum(reg for q, reg in _MEMBARRIER if _answer(inj, q, scratch) == 0)


def _core_cookie(tid: int) -> int:
    """The thread's core-scheduling cookie, asked from ckpt (ptrace read access); 0 without CONFIG_SCHED_CORE."""
    cookie = ctypes.c_uint64(0)
    try:
        syscall(NR.prctl, PR_SCHED_CORE, PR_SCHED_CORE_GET, tid, PIDTYPE_PID, ctypes.addressof(cookie),
                name=f"prctl(PR_SCHED_CORE_GET, {tid})")
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENODEV):
            return 0
        raise
    return cookie.value


def _thread(proc: FrozenProcess, tid: int, scratch: Scratch) -> process_pb2.ThreadAttrs | None:
    """One thread's attributes, None when all are the defaults; Unsupported for one ckpt cannot restore."""
    if read_task_stat(proc.pid, tid).flags & (_PF_MEMALLOC_NOIO | _PF_LOCAL_THROTTLE) == \
            _PF_MEMALLOC_NOIO | _PF_LOCAL_THROTTLE:
        raise Unsupported(f"thread {tid} of process {proc.pid} is an I/O flusher (PR_SET_IO_FLUSHER): setting it "
                          "again needs CAP_SYS_RESOURCE, and ckpt does not restore it")
    try:
        sud = ptrace.get_syscall_user_dispatch_mode(tid)
    except OSError as exc:  # EIO: a kernel before 6.3, which has no such request
        sud = 0 if exc.errno in (errno.EIO, errno.EINVAL) else 1
    if sud:
        raise Unsupported(f"thread {tid} of process {proc.pid} has syscall user dispatch on "
                          "(PR_SET_SYSCALL_USER_DISPATCH): ckpt does not restore it yet")
    if _core_cookie(tid):
        raise Unsupported(f"thread {tid} of process {proc.pid} has a core-scheduling cookie (PR_SCHED_CORE): a "
                          "restore could only make a new one, and not share it as it was shared")
    inj = proc.injector(tid)
    t = process_pb2.ThreadAttrs(tid=tid)
    tsc, mce = _answer(inj, TSC, scratch), _answer(inj, MCE_KILL, scratch)
    if tsc is not None and tsc != PR_TSC_ENABLE:
        t.tsc = tsc
    if mce is not None and mce != PR_MCE_KILL_DEFAULT:
        t.mce_kill = mce
    for line, _, field in _SPEC_LINES:
        try:
            value = read_status_values(proc.pid, line, tid=tid)[0]
        except ValueError:  # a kernel or CPU without that mitigation prints no such line
            continue
        if value in _SPEC_SET:
            setattr(t, field, _SPEC_SET[value])
    return t if t != process_pb2.ThreadAttrs(tid=tid) else None


def dump(proc: FrozenProcess, scratch: Scratch, *, tolerate: frozenset[str] = frozenset(),
         notes: list[str] | None = None) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment with ``attrs``."""
    pid = proc.pid
    a = process_pb2.ProcAttrs()
    loginuid = _read_u32(f"/proc/{pid}/loginuid")
    if loginuid is not None:  # absent without CONFIG_AUDIT
        a.has_loginuid, a.loginuid = True, loginuid
    session = _read_u32(f"/proc/{pid}/sessionid")
    if session is not None and session != UNSET and session != _read_u32("/proc/self/sessionid"):
        lose("audit-session", tolerate, f"process {pid}", f"audit session id {session}", notes)
    inj = proc.injector()
    a.membarrier = _membarrier(inj, scratch)
    a.mdwe = _answer(inj, MDWE, scratch) or 0
    for tid in sorted(proc.threads):
        t = _thread(proc, tid, scratch)
        if t is not None:
            a.threads.append(t)
    return process_pb2.ProcessEntry(attrs=a)


def restore_loginuid(inj: Injector, entry: process_pb2.ProcessEntry, *, scratch: Scratch | None = None) -> None:
    """Write the image's loginuid from inside the process (before its threads exist: they inherit it).

    Unset here, anyone may set it; set, it takes CAP_AUDIT_CONTROL (and no audit ``loginuid_immutable``).
    """
    a = entry.attrs
    if not a.has_loginuid or _read_u32(f"/proc/{inj.pid}/loginuid") in (a.loginuid, None):
        return
    with scratch_for(inj, scratch, 64) as s:
        s.write(0, b"/proc/self/loginuid\0")
        s.write(32, str(a.loginuid).encode())
        try:
            fd = inj.call(NR.openat, _AT_FDCWD, s.addr, _O_WRONLY, 0, name="openat(/proc/self/loginuid)")
            try:
                inj.call(NR.write, fd, s.addr + 32, len(str(a.loginuid)), name=f"write(loginuid {a.loginuid})")
            finally:
                inj.call(NR.close, fd, name="close")
        except OSError as exc:
            raise RestoreError(f"process {inj.pid}: its audit loginuid {a.loginuid} cannot be set: "
                               f"{os.strerror(exc.errno or 0)}",
                               hint="a loginuid already set can be changed only with CAP_AUDIT_CONTROL, and never "
                                    "once audit made it immutable") from exc


def _prctl(inj: Injector, *args: int, what: str) -> None:
    try:
        inj.call(NR.prctl, *args, *(0,) * (5 - len(args)), name=f"prctl({what})")
    except OSError as exc:
        raise RestoreError(f"process {inj.pid}/{inj.tid}: prctl({what}) failed: {os.strerror(exc.errno or 0)}") from exc


def restore(injectors: dict[int, Injector], entry: process_pb2.ProcessEntry, *, scratch: Scratch | None = None) -> None:
    """Every other attribute, once the threads exist (``injectors``: by tid, the leader's at ``entry.pid``)."""
    if not entry.HasField("attrs"):
        return
    a = entry.attrs
    inj = injectors[entry.pid]
    for t in a.threads:
        tinj = injectors[t.tid]
        if t.tsc:
            _prctl(tinj, PR_SET_TSC, t.tsc, what=f"PR_SET_TSC, {t.tsc}")
        if t.mce_kill:
            _prctl(tinj, PR_MCE_KILL, PR_MCE_KILL_SET, t.mce_kill, what=f"PR_MCE_KILL, SET, {t.mce_kill}")
        for _, which, field in _SPEC_LINES:
            value = getattr(t, field)
            if value:
                _prctl(tinj, PR_SET_SPECULATION_CTRL, which, value, what=f"PR_SET_SPECULATION_CTRL, {which}, {value}")
    for _, reg in _MEMBARRIER:
        if a.membarrier & reg:
            try:
                inj.call(NR.membarrier, reg, 0, 0, name=f"membarrier(REGISTER {reg:#x})")
            except OSError as exc:
                raise RestoreError(f"process {entry.pid}: membarrier registration {reg:#x} failed: "
                                   f"{os.strerror(exc.errno or 0)}") from exc
    got = _membarrier(inj, scratch)
    if got != a.membarrier:
        raise RestoreError(f"process {entry.pid}: membarrier registrations {got:#x} after the restore, "
                           f"{a.membarrier:#x} at the dump")
    if a.mdwe:  # last: it refuses any later gain of PROT_EXEC
        _prctl(inj, PR_SET_MDWE, a.mdwe, what=f"PR_SET_MDWE, {a.mdwe:#x}")
