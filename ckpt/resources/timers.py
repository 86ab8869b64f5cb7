"""Interval timers (setitimer) and POSIX timers (timer_create): dumped and restored by injected syscalls.

Both kinds belong to the process (its signal_struct), not to a thread, and are
not inherited across fork: the restore helper starts with none.  What is kept
is the time *left* when the dump read it, the target frozen; the restore arms
each timer with that much left, so the time the image spent on disk does not
count (as in CRIU).

Why each step is done the way it is:

* Dump: ``getitimer`` for ITIMER_REAL/VIRTUAL/PROF and, per POSIX timer,
  ``timer_gettime`` and ``timer_getoverrun`` can only be asked from inside;
  what timer_create was given (clock, sigevent, target thread) only
  ``/proc/PID/timers`` tells (:mod:`ckpt.procfs.timers`).  Nothing is changed:
  a dump with ``-R`` leaves every timer as it was (``timer_settime`` or
  ``timer_delete`` would also drop the timer's queued signal, 6.13+).
* Restore, ids: the program holds the timer ids, so each timer must come back
  with its own.  Linux 6.17+ has ``prctl(PR_TIMER_CREATE_RESTORE_IDS)``: while
  on, ``timer_create`` creates the id found in the timer_t it is handed (any
  id, unprivileged; EBUSY if taken).  Without it (EINVAL), timers are created
  in id order and the kernel's per-process counter hands out 0, 1, 2, …; the
  ids in between are filled with temporary timers, deleted at the end (CRIU's
  old way), up to :data:`MAX_FILLERS`.  A kernel that does not count like
  that is refused.
* Restore, order: after the threads exist (a SIGEV_THREAD_ID timer names a
  tid of the process) and before the credentials are dropped (CLOCK_*_ALARM
  timers need CAP_WAKE_ALARM) and the pending signals are queued again.  Every
  thread blocks every signal by then, so a timer that expires before the
  process runs only queues its signal.
* Signals of expiries before the dump are in the pending queues of the image
  (:mod:`ckpt.resources.signals`) and are queued again as plain signals: a
  timer's own queued signal is not re-created, and delivering it does not
  re-arm the restored timer.  An expiry *between* reading the timer and the
  end of the dump (which reads the queues last) would be delivered twice —
  once from the queue, once by the restored timer armed with the time left
  before it; ``queued_at_read`` tells the restore, which arms such a timer one
  interval later (a one-shot one not at all).  What stays different: while a
  periodic timer's signal stays queued (blocked), the kernel counts further
  expiries as overruns of that signal; a restored timer cannot join the
  re-queued copy, so a program that keeps it blocked gets one signal more, and
  the overruns split between the two (1 + si_overrun still sums up to the
  expiries).  ``timer_getoverrun`` restarts at 0.
* ITIMER_REAL is re-armed by the kernel when its SIGALRM is dequeued; while
  that SIGALRM waits, getitimer reads ``value 0`` with the interval set.
  ``setitimer`` with value 0 would clear the interval, so such a timer is
  armed 1 µs away: its SIGALRM merges with the queued one (not a real-time
  signal) and the timer then waits for that delivery, as it did.
* ``setitimer`` adds one tick (4 ms at HZ=250) to ITIMER_VIRTUAL/PROF values
  (kernel/time/itimer.c, set_cpu_itimer): measured, kept.
"""

from __future__ import annotations

import ctypes
import errno
from collections import Counter
from collections.abc import Iterable, Sequence

from ..control.inject import OUT, Injector, Query, Scratch
from ..control.seize import FrozenProcess
from ..errors import RestoreError, Unsupported
from ..image.pb import common_pb2, core_pb2, process_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.signals import SI_TIMER, siginfo_code
from ..kernel.timers import (
    ITIMER_NAMES, ITIMER_PROF, ITIMER_REAL, ITIMER_VIRTUAL, PR_TIMER_CREATE_RESTORE_IDS,
    PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON, SIGEV_THREAD_ID, itimerspec, itimerval, sigevent,
    siginfo_timerid, timespec, timeval,
)
from ..procfs.snapshot import Snapshot
from . import signals
from ._scratch import scratch_for

__all__ = [
    "MAX_FILLERS", "dump", "dump_itimers", "dump_posix_timers", "restore", "restore_itimers", "restore_posix_timers",
    "create_posix_timers", "queued_signals", "timer_signal_counts", "arm_value_ns",
]

#: Temporary timers the restore may create to reach the ids when the kernel cannot be told the id:
#: each holds a preallocated signal queue entry (RLIMIT_SIGPENDING) until the end.
MAX_FILLERS = 4096
_ITV = ctypes.sizeof(itimerval)
_ITS = ctypes.sizeof(itimerspec)
_SEV = ctypes.sizeof(sigevent)
_WHICH = (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF)


# --- dump ---

def dump(proc: FrozenProcess, snap: Snapshot, *, scratch: Scratch | None = None) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment with ``timers``; left unset when no timer is armed or created."""
    entry = process_pb2.ProcessEntry()
    real, virtual, prof = dump_itimers(proc, scratch=scratch)
    posix = dump_posix_timers(proc, snap, scratch=scratch)
    if posix or any(it.value_us or it.interval_us for it in (real, virtual, prof)):
        tm = entry.timers
        tm.real.CopyFrom(real)
        tm.virtual.CopyFrom(virtual)
        tm.prof.CopyFrom(prof)
        tm.posix.extend(posix)
    return entry


#: getitimer(which, &value), by ITIMER_*.
GETITIMER = {which: Query(f"getitimer({ITIMER_NAMES[which]})", NR.getitimer, (which, OUT), out=_ITV) for which in _WHICH}
#: What :func:`dump` lets a dump ask ahead, of a whole tree at once (inject.ask_all): the CPU-time
#: timers, which stand still while the process is frozen.  ITIMER_REAL runs on: it is asked here,
#: as late as can be (see ckpt.dump.PROCESS_DUMPERS).
QUERIES = (GETITIMER[ITIMER_VIRTUAL], GETITIMER[ITIMER_PROF])


def dump_itimers(proc: FrozenProcess, *, scratch: Scratch | None = None) -> list[process_pb2.ItimerVal]:
    """ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, by injected getitimer."""
    inj = proc.injector()
    with scratch_for(inj, scratch, _ITV) as s:
        raws = [inj.ask(GETITIMER[which], s)[1] for which in _WHICH]
    out = []
    for raw in raws:
        it = itimerval.from_buffer_copy(raw)
        out.append(process_pb2.ItimerVal(value_us=it.it_value.usec, interval_us=it.it_interval.usec))
    return out


def dump_posix_timers(proc: FrozenProcess, snap: Snapshot, *,
                      scratch: Scratch | None = None) -> list[process_pb2.PosixTimer]:
    """Every POSIX timer by increasing id: /proc for how it was created, injected timer_gettime/getoverrun
    for its state, then the SI_TIMER signals queued for it (``queued_at_read``)."""
    found = snap.timers
    if not found:
        return []
    for t in found:
        if t.sigev_notify & SIGEV_THREAD_ID and t.notify_pid not in proc.threads:
            raise Unsupported(f"process {proc.pid}: POSIX timer {t.id} signals thread "
                              f"{t.notify_pid or '(exited)'}, which is not one of its threads: "
                              "it could not be created again")
    inj = proc.injector()
    out = []
    with scratch_for(inj, scratch, _ITS) as s:
        for t in found:
            inj.call(NR.timer_gettime, t.id, s.addr, name=f"timer_gettime({t.id})")
            spec = itimerspec.from_buffer_copy(s.read(0, _ITS))
            overrun = inj.call(NR.timer_getoverrun, t.id, name=f"timer_getoverrun({t.id})")
            out.append(process_pb2.PosixTimer(
                id=t.id, clock_id=t.clock_id, sigev_notify=t.sigev_notify, signo=t.signo,
                sigev_value=t.sigev_value, notify_tid=t.notify_pid if t.sigev_notify & SIGEV_THREAD_ID else 0,
                value_ns=spec.it_value.nsec, interval_ns=spec.it_interval.nsec, overrun=overrun))
    queued = timer_signal_counts(queued_signals(proc))
    for pt in out:
        pt.queued_at_read = queued[pt.id]
    return out


def queued_signals(proc: FrozenProcess) -> list[bytes]:
    """Siginfo of every signal queued now or held back by the injector (PTRACE_PEEKSIGINFO: nothing dequeued)."""
    infos = [p.siginfo for p in signals.dump_shared_pending(proc)]
    for tid, thread in proc.threads.items():
        if thread.gone:
            continue
        infos += [d.siginfo for d in thread.deferred]
        infos += [p.siginfo for p in signals.dump_thread_pending(proc, tid)]
    return infos


def timer_signal_counts(infos: Iterable[bytes]) -> Counter[int]:
    """How many SI_TIMER signals each timer id has among ``infos`` (raw siginfo)."""
    return Counter(siginfo_timerid(i) for i in infos if siginfo_code(i) == SI_TIMER)


# --- restore ---

def restore(inj: Injector, entry: process_pb2.ProcessEntry, cores: Sequence[core_pb2.ThreadCore], *,
            scratch: Scratch | None = None, explicit_ids: bool | None = None) -> None:
    """Every timer of ``entry`` into the process of ``inj``; nothing for an image without timers.

    ``cores``: the threads' records, for the pending signals of each timer.
    ``explicit_ids``: None tries PR_TIMER_CREATE_RESTORE_IDS and falls back to
    counting ids; False counts without trying (tests of the fallback).
    """
    if not entry.HasField("timers"):
        return
    tm = entry.timers
    restore_itimers(inj, tm, scratch=scratch)
    if tm.posix:
        pending: list[common_pb2.PendingSignal] = list(entry.shared_pending)
        for core in cores:
            pending += core.pending
        restore_posix_timers(inj, tm.posix, timer_signal_counts(bytes(p.siginfo) for p in pending),
                             scratch=scratch, explicit_ids=explicit_ids)


def restore_itimers(inj: Injector, tm: process_pb2.Timers, *, scratch: Scratch | None = None) -> None:
    """setitimer for each interval timer the image has armed (or with an interval: see the module doc)."""
    with scratch_for(inj, scratch, _ITV) as s:
        for which, it in ((ITIMER_REAL, tm.real), (ITIMER_VIRTUAL, tm.virtual), (ITIMER_PROF, tm.prof)):
            value = it.value_us
            if not value and not it.interval_us:
                continue
            if not value and which == ITIMER_REAL:
                value = 1  # waiting for its queued SIGALRM to be dequeued: see the module doc
            s.write(0, bytes(itimerval(timeval.of_usec(it.interval_us), timeval.of_usec(value))))
            try:
                inj.call(NR.setitimer, which, s.addr, 0, name=f"setitimer({ITIMER_NAMES[which]})")
            except OSError as exc:
                raise RestoreError(f"{ITIMER_NAMES[which]} ({value} µs, every {it.interval_us} µs): "
                                   f"{exc.strerror}") from exc


def arm_value_ns(t: process_pb2.PosixTimer, pending: int) -> int:
    """Time left to arm timer ``t`` with, given ``pending`` SI_TIMER signals of it in the image.

    More than ``queued_at_read`` means it expired after it was read (module
    doc): the signal is in the queue, so the restored timer skips that expiry.
    """
    extra = pending - t.queued_at_read
    if extra <= 0 or not t.value_ns:
        return t.value_ns
    if not t.interval_ns:
        return 0
    return t.value_ns + extra * t.interval_ns


def restore_posix_timers(inj: Injector, timers: Sequence[process_pb2.PosixTimer], pending: Counter[int], *,
                         scratch: Scratch | None = None, explicit_ids: bool | None = None) -> None:
    """Create every timer with its id, then arm each with its time left and interval."""
    with scratch_for(inj, scratch, _SEV + _ITS) as s:
        create_posix_timers(inj, s, timers, explicit_ids=explicit_ids)
        for t in timers:
            value = arm_value_ns(t, pending[t.id])
            if not value:
                continue  # created disarmed (an interval without a value is not kept by the kernel either)
            s.write(0, bytes(itimerspec(timespec.of_nsec(t.interval_ns), timespec.of_nsec(value))))
            try:
                inj.call(NR.timer_settime, t.id, 0, s.addr, 0, name=f"timer_settime({t.id})")
            except OSError as exc:
                raise RestoreError(f"POSIX timer {t.id}: cannot arm it ({value} ns, every {t.interval_ns} ns): "
                                   f"{exc.strerror}") from exc


def _sigevent(t: process_pb2.PosixTimer) -> bytes:
    return bytes(sigevent(sigev_value=t.sigev_value, sigev_signo=t.signo, sigev_notify=t.sigev_notify,
                          sigev_notify_thread_id=t.notify_tid))


def create_posix_timers(inj: Injector, s: Scratch, timers: Sequence[process_pb2.PosixTimer], *,
                        explicit_ids: bool | None = None) -> None:
    """timer_create each timer so that it gets its recorded id (disarmed); ``s`` holds a sigevent and a timer_t."""
    ordered = sorted(timers, key=lambda t: t.id)
    if explicit_ids is not False:
        try:
            inj.call(NR.prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0,
                     name="prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)")
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: before Linux 6.17
                raise RestoreError(f"prctl(PR_TIMER_CREATE_RESTORE_IDS): {exc.strerror}") from exc
        else:
            # (A failure kills the helper: no need to switch the mode off on the way out.)
            for t in ordered:
                got = _create(inj, s, t, want=t.id)
                if got != t.id:
                    raise RestoreError(f"POSIX timer {t.id}: the kernel created timer {got} instead")
            inj.call(NR.prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0,
                     name="prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)")
            return
    _create_counting(inj, s, ordered)


def _create_counting(inj: Injector, s: Scratch, ordered: Sequence[process_pb2.PosixTimer]) -> None:
    """Without PR_TIMER_CREATE_RESTORE_IDS: the ids come 0, 1, 2, … in a fresh process; fill the gaps."""
    fillers: list[int] = []
    expect = 0
    for t in ordered:
        if t.id - expect > MAX_FILLERS - len(fillers):
            raise RestoreError(f"POSIX timer {t.id}: out of reach, this kernel cannot create a timer with a "
                               f"given id (PR_TIMER_CREATE_RESTORE_IDS is Linux 6.17+) and getting there "
                               f"would take more than {MAX_FILLERS} temporary timers")
        while True:
            got = _create(inj, s, t)
            if got != expect:
                raise RestoreError(f"POSIX timer {t.id}: the kernel gave id {got} where {expect} was due: "
                                   "it does not hand out timer ids in order, and cannot be given the id")
            expect += 1
            if got == t.id:
                break
            fillers.append(got)  # kept until the end: a kernel that reuses freed ids must not get it back
    for tid in fillers:
        inj.call(NR.timer_delete, tid, name=f"timer_delete({tid}) (temporary)")


def _create(inj: Injector, s: Scratch, t: process_pb2.PosixTimer, want: int = 0) -> int:
    """One injected timer_create of ``t``'s clock and sigevent; the id the kernel wrote back."""
    s.write(0, _sigevent(t))
    s.write(_SEV, (want & 0xFFFFFFFF).to_bytes(4, "little"))
    try:
        inj.call(NR.timer_create, t.clock_id, s.addr, s.addr + _SEV, name=f"timer_create(id {t.id})")
    except OSError as exc:
        what = "the id is taken" if exc.errno == errno.EBUSY else exc.strerror
        thread = f", thread {t.notify_tid}" if t.notify_tid else ""
        raise RestoreError(f"POSIX timer {t.id} (clock {t.clock_id}, signal {t.signo}, notify {t.sigev_notify}"
                           f"{thread}): cannot create it: {what}") from exc
    return int.from_bytes(s.read(_SEV, 4), "little", signed=True)
