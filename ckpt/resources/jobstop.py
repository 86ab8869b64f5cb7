"""Group stops (job control): a process stopped by SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU stays stopped.

Dump: a thread seized in a group stop reports it as such (PTRACE_SEIZE shows
a group-stop as ``PTRACE_EVENT_STOP`` with the stop signal, an interrupt as one
with SIGTRAP), so the freeze itself tells the stop and its signal.  Whether
the parent has collected the stop yet lives in the kernel's
``signal->group_exit_code`` (cleared by a ``waitpid(WUNTRACED)``), which only
the parent can see: ``waitid(P_PID, pid, WSTOPPED | WNOHANG | WNOWAIT)`` is
injected into the (frozen) parent when it is in the tree — WNOWAIT reads the
report without taking it.  A parent outside the tree (the root's) is not asked.

A dump that lets the tree go (-R, pre-dump) needs nothing: PTRACE_DETACH puts
a thread of a stopped group back into the stop (``__ptrace_unlink`` sets
JOBCTL_STOP_PENDING again), and the report stays as it was.

Restore: while the process's threads are still ours, with their final frames
and masks, the stop signal is queued to the process and its leader let on
through ``get_signal()``: it dequeues the signal (a pending signal that comes
first is held back and queued again afterwards, as it was still pending in
the stopped process), and delivering it to itself starts the group stop, which
the leader enters at once while traced.  Detached, every thread takes part in
the stop: the kernel completes it and reports it to the parent (SIGCHLD with
CLD_STOPPED, ``group_exit_code``) as a stop always does.  The parent, still
frozen (children are let go first), is then put back to what it knew: the
SIGCHLD is taken back unless it had one pending at the dump (a second one
merges with it), and a stop it had already collected is collected again
(``waitid(WSTOPPED | WNOHANG)``), so a later ``waitpid(WUNTRACED)`` reports
exactly the stops it reported before the dump.  A SIGTSTP/SIGTTIN/SIGTTOU
stop whose process group is orphaned here (the kernel discards those
signals there) is made with SIGSTOP, with a note (WSTOPSIG then says SIGSTOP).

Threads blocked in a call when the group stopped keep the frame they were
frozen with (:mod:`.blocked`): after SIGCONT the kernel restarts the call, or
ends it with EINTR if a handler runs, by its own rules.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Mapping, Sequence

from ..control.inject import Injector, Scratch
from ..control.seize import DeferredSignal, FrozenProcess, _requeue
from ..errors import RestoreError
from ..image.pb import process_pb2
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR
from ..kernel.ptrace import StopKind
from ..procfs.stat import read_task_stat
from ..procfs.task import list_tids

__all__ = ["stop_signal", "survey", "enter_stop", "settle_parent", "STOP_TIMEOUT"]

#: Seconds to wait for a restored group stop to complete (a guard against a hang, never a bound on speed).
STOP_TIMEOUT = 10.0

_P_PID = 1
_WSTOPPED, _WNOHANG, _WNOWAIT = 2, 1, 0x01000000
_CLD_STOPPED = 5
_SA_NOCLDSTOP = 1
_SIG_IGN = 1
_SIGINFO_SIZE = 128
#: siginfo_t of SIGCHLD on x86_64: si_signo, si_errno, si_code, (padding), si_pid, si_uid, si_status.
_SIGCHLD_INFO = struct.Struct("<iiiiiIi")


# --- dump ---------------------------------------------------------------------------------------


def stop_signal(proc: FrozenProcess) -> int:
    """The signal of the group stop the process was seized in (0: it was not stopped)."""
    for t in proc.threads.values():
        st = t.snapshot.stop
        if st.kind is StopKind.GROUP_STOP:
            return st.stopsig or signal.SIGSTOP
    return 0


def _stop_report(inj: Injector, scratch: Scratch, pid: int, *, take: bool) -> tuple[int, int] | None:
    """``waitid`` for the stop of child ``pid``, injected in its parent: (si_code, si_status), None if none.

    ``take``: collect it (as the parent's own ``waitpid(WUNTRACED)`` would); else only look (WNOWAIT).
    """
    scratch.write(0, bytes(_SIGINFO_SIZE))
    flags = _WSTOPPED | _WNOHANG | ptrace.__WALL | (0 if take else _WNOWAIT)
    inj.call(NR.waitid, _P_PID, pid, scratch.addr, flags, 0, name=f"waitid(P_PID, {pid}, WSTOPPED)")
    _signo, _errno, code, _pad, got, _uid, status = _SIGCHLD_INFO.unpack(scratch.read(0, _SIGCHLD_INFO.size))
    return (code, status) if got == pid else None


def survey(procs: Mapping[int, FrozenProcess], ppid_of: Mapping[int, int],
           scratch_of: Mapping[int, Scratch]) -> dict[int, process_pb2.JobStop]:
    """The group stop of each stopped process of a frozen tree, with whether its parent (if in the tree)
    has yet to collect it."""
    out: dict[int, process_pb2.JobStop] = {}
    for pid, proc in procs.items():
        sig = stop_signal(proc)
        if not sig:
            continue
        js = process_pb2.JobStop(signal=sig)
        parent = procs.get(ppid_of[pid])
        if parent is not None:
            js.unreported = _stop_report(parent.injector(), scratch_of[parent.pid], pid, take=False) is not None
        out[pid] = js
    return out


# --- restore ------------------------------------------------------------------------------------


def enter_stop(proc: FrozenProcess, sig: int) -> tuple[int, list[str]]:
    """Put the (fully restored, still traced) process into a group stop by ``sig``; its threads stay ours.

    Each thread must have its final frame and mask already.  Returns the signal that stopped it and notes.
    """
    pid = proc.pid
    main = proc.main_thread
    notes: list[str] = []
    held: list[DeferredSignal] = []
    os.kill(pid, sig)  # in the shared queue: no thread runs while every one is traced
    main.resume(ptrace.cont, 0)
    while True:
        st = main.wait()
        if st.gone:
            raise RestoreError(f"process {pid} ended while it was being stopped again")
        kind = st.kind
        if kind is StopKind.GROUP_STOP:
            break
        if kind is StopKind.SIGNAL_DELIVERY and st.stopsig == sig:
            ptrace.interrupt(main.tid)  # a stop signal the kernel discards (orphaned group) ends at this trap
            main.resume(ptrace.cont, sig)
            continue
        if kind is StopKind.SIGNAL_DELIVERY:  # pending before the stop, and still pending in a stopped process
            held.append(DeferredSignal(st.stopsig or 0, ptrace.getsiginfo(main.tid)))
        elif kind is StopKind.EVENT_STOP and sig != signal.SIGSTOP:  # discarded: SIGSTOP never is
            notes.append(f"process {pid} was stopped by {signal.Signals(sig).name}, which its process group, "
                         "orphaned here, discards: it is stopped by SIGSTOP instead (WSTOPSIG says so)")
            sig = signal.SIGSTOP
            os.kill(pid, sig)
        elif kind is StopKind.EVENT_STOP:
            raise RestoreError(f"process {pid} did not take SIGSTOP into a group stop")
        main.resume(ptrace.cont, 0)
    for s in held:
        _requeue(pid, main.tid, s)
    return sig, notes


def wait_stopped(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """Wait until every thread of the (detached) process shows state T: the group stop is complete."""
    deadline = time.monotonic() + timeout
    while True:
        states = {tid: read_task_stat(pid, tid).state for tid in list_tids(pid)}
        if all(s == "T" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise RestoreError(f"process {pid} did not stop again within {timeout:.0f}s: {states}")
        time.sleep(0.001)


def _has_pending(entry: process_pb2.ProcessEntry, cores: Sequence, signo: int) -> bool:
    return any(p.signo == signo for p in entry.shared_pending) or any(
        p.signo == signo for c in cores for p in c.pending)


def settle_parent(inj: Injector, scratch: Scratch, pid: int, js: process_pb2.JobStop,
                  parent: process_pb2.ProcessEntry, parent_cores: Sequence) -> None:
    """After child ``pid``'s stop is complete, give its frozen parent back its own view of it.

    RestoreError if the parent cannot see the stop as the child's (the check of this state).
    """
    sa = parent.sigactions[signal.SIGCHLD - 1] if len(parent.sigactions) >= signal.SIGCHLD else None
    sent = sa is None or (sa.handler != _SIG_IGN and not sa.flags & _SA_NOCLDSTOP)
    if sent and not _has_pending(parent, parent_cores, signal.SIGCHLD):
        scratch.write(0, struct.pack("<Qqq", 1 << (signal.SIGCHLD - 1), int(STOP_TIMEOUT), 0))
        try:
            inj.call(NR.rt_sigtimedwait, scratch.addr, 0, scratch.addr + 8, 8, name="rt_sigtimedwait(SIGCHLD)")
        except OSError as exc:
            raise RestoreError(f"the parent of stopped process {pid} got no SIGCHLD for its stop: "
                               f"{os.strerror(exc.errno or 0)}") from exc
    report = _stop_report(inj, scratch, pid, take=not js.unreported)
    if report is None or report != (_CLD_STOPPED, js.signal):
        raise RestoreError(f"the parent of stopped process {pid} sees {report} (si_code, si_status) instead of "
                           f"its stop by signal {js.signal}")
