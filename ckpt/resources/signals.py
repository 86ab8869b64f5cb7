"""Signal dispositions and pending signals: dump through injected rt_sigaction and PTRACE_PEEKSIGINFO, restore by injection.

What is process-wide lives here: the 64 dispositions (``struct sigaction``:
handler, flags, restorer, mask) and the shared pending queue (``ShdPnd``, what
kill(2) and sigqueue(3) aim at).  Per-thread pending signals (``SigPnd``,
tgkill) are dumped and restored per thread with :func:`dump_thread_pending` /
:func:`restore_pending` ``(thread=True)``; the per-thread *blocked* mask
belongs to the threads module.

Why each step is done the way it is:

* Dispositions can only be read from inside (/proc shows SigCgt/SigIgn bits,
  not handlers): ``rt_sigaction(sig, NULL, scratch)`` — for the signals those
  bits mark, plus SIGCHLD (SA_NOCLDSTOP/SA_NOCLDWAIT matter with SIG_DFL too).
  Every other signal is SIG_DFL, whose flags and mask have no effect; asking
  all 64 was most of a small process's dump (one ptrace round trip each).
  Restore likewise sets only the dispositions that are not plain SIG_DFL in
  the image or not SIG_DFL in the helper now (its own SigCgt/SigIgn).
* PTRACE_PEEKSIGINFO leaves the signals queued, so a dump that lets the target
  run on changes nothing.  A signal pending without a queue entry (the queue
  was full: RLIMIT_SIGPENDING) has no siginfo; it is saved with the zeroed
  siginfo the kernel itself would hand out (si_code SI_USER, pid 0).
* Restore queues each signal again with ``rt_sigqueueinfo`` /
  ``rt_tgsigqueueinfo`` *injected into the restored process itself*.  The
  kernel forbids forging si_code >= 0 (kill) or SI_TKILL (tgkill) for another
  process, even for root (kernel/signal.c, do_rt_sigqueueinfo: "Not even root
  can pretend to send signals from the kernel"), but not for the caller's own
  pid/tid — so from inside, every siginfo, sender pid and uid included, goes
  back unchanged.  A per-thread signal must therefore be queued by an injector
  of that very thread.
* Order: dispositions before pending signals (setting SIG_IGN discards
  pending ones), and pending signals while the restored thread blocks every
  signal (its own mask is set by PTRACE_SETSIGMASK as it is let go): a signal
  it does not block would be dequeued by the next injected syscall, held back
  by the injector and sent again from outside, where the kernel lets us keep
  only part of its siginfo.
* Dump: the queues are read after the last injected syscall
  (:func:`dump_pending`), and the signals the injector held back meanwhile
  are added to the image.
* A single step forces SIGTRAP, which resets an ignored SIGTRAP to SIG_DFL, and
  a caught one too when SIGTRAP is blocked (as in a helper being restored):
  when the image ignores or catches SIGTRAP, the injectors of the process are
  switched to syscall stops before that disposition is set (see
  :mod:`ckpt.control.inject`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from ..control.inject import OUT, Injector, Query, Scratch
from ..control.seize import FrozenProcess
from ..errors import TargetError
from ..image.pb import common_pb2, core_pb2, process_pb2
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR
from ..kernel.signals import (
    NSIG, SIG_DFL, SIG_IGN, SIGCHLD, SIGINFO_SIZE, SIGKILL, SIGSET_SIZE, SIGSTOP, SIGTRAP, SI_USER, kernel_sigaction,
    make_siginfo, sigbit, siginfo_signo,
)
from ..procfs.snapshot import Snapshot
from ..procfs.status import Status, read_status, read_status_values
from ._scratch import scratch_for

__all__ = [
    "UNCHANGEABLE", "dump", "dump_sigactions", "dump_shared_pending", "dump_thread_pending",
    "restore", "restore_sigactions", "restore_pending",
]

#: Signals whose disposition cannot be changed (rt_sigaction gives EINVAL).
UNCHANGEABLE = frozenset({SIGKILL, SIGSTOP})
_ACT_SIZE = ctypes.sizeof(kernel_sigaction)


def dump(proc: FrozenProcess, snap: Snapshot, *, scratch: Scratch | None = None) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment with ``sigactions`` (merge it with MergeFrom).

    The pending queues are not read here but by :func:`dump_pending`, after
    the dump's last injected syscall.
    """
    entry = process_pb2.ProcessEntry()
    entry.sigactions.extend(dump_sigactions(proc, scratch=scratch, status=snap.status))
    return entry


def dump_pending(proc: FrozenProcess, entry: process_pb2.ProcessEntry, cores: Sequence[core_pb2.ThreadCore]) -> None:
    """Fill ``entry.shared_pending`` and every ``core.pending``: call it after the last injected syscall.

    Why then: an injected syscall makes the thread dequeue a pending signal it
    does not block, and the injector holds it back (``FrozenThread.deferred``)
    until release.  Read after every injection, the queues no longer hold the
    held-back signals, so adding those (as pending for the thread that took
    them, oldest first: the kernel delivers a thread's own queue before the
    shared one) puts each signal that arrived before this moment in the image
    exactly once — also when the target is killed after the dump and never
    gets the held-back ones.
    """
    entry.shared_pending.extend(dump_shared_pending(proc))
    for core in cores:
        thread = proc.thread(core.tid)
        core.pending.extend(common_pb2.PendingSignal(signo=d.signo, siginfo=d.siginfo) for d in thread.deferred)
        core.pending.extend(dump_thread_pending(proc, core.tid))


#: rt_sigaction(signo, NULL, &old), by signal number.
SIGACTION = {signo: Query(f"rt_sigaction({signo})", NR.rt_sigaction, (signo, 0, OUT, SIGSET_SIZE), out=_ACT_SIZE)
             for signo in range(1, NSIG + 1)}


def queries(status: Status) -> tuple[Query, ...]:
    """What :func:`dump_sigactions` asks the process (a dump may ask them of a whole tree at once:
    inject.ask_all): the dispositions that are not plain SIG_DFL, and SIGCHLD's (see above)."""
    return tuple(SIGACTION[signo] for signo in sorted(_not_default(status) | {SIGCHLD}))


def dump_sigactions(proc: FrozenProcess, *, scratch: Scratch | None = None,
                    status: Status | None = None) -> list[process_pb2.SigAction]:
    """Signals 1..64 in order (entry i is signal i+1): injected rt_sigaction where not plain SIG_DFL (see above)."""
    inj = proc.injector()
    st = status if status is not None else read_status(proc.pid)
    with scratch_for(inj, scratch, _ACT_SIZE) as s:
        got = {q.args[0]: inj.ask(q, s)[1] for q in queries(st)}
    out = []
    for signo in range(1, NSIG + 1):
        raw = got.get(signo)
        if raw is None:  # SIG_DFL, no flags, empty mask
            out.append(process_pb2.SigAction(signo=signo))
            continue
        act = kernel_sigaction.from_buffer_copy(raw)
        _check_against_status(proc.pid, signo, act.sa_handler, st)
        out.append(process_pb2.SigAction(signo=signo, handler=act.sa_handler, flags=act.sa_flags,
                                         restorer=act.sa_restorer, mask=act.sa_mask))
    return out


def _disposition(handler: int) -> str:
    return "default" if handler == SIG_DFL else "ignored" if handler == SIG_IGN else "caught"


def _check_against_status(pid: int, signo: int, handler: int, st: Status) -> None:
    """Refuse an injected answer that the kernel's own account (SigCgt, SigIgn of /proc/PID/status) denies.

    The process cannot shape ckpt's calls today (seccomp suspended, rseq hidden); if it ever could, the
    dump refuses rather than record what it was told.
    """
    bit = sigbit(signo)
    kernel = "caught" if st.sigcgt & bit else "ignored" if st.sigign & bit else "default"
    told = _disposition(handler)
    if told != kernel:
        raise TargetError(pid, f"process {pid}: signal {signo} is {kernel} by the kernel's account (/proc status), "
                          f"but the injected rt_sigaction answered {told} ({handler:#x}): refusing to record an "
                          "answer the process may have shaped")


def _pending(tid: int, bits: int, *, shared: bool) -> list[common_pb2.PendingSignal]:
    queued = ptrace.peeksiginfo(tid, shared=shared)
    out = [common_pb2.PendingSignal(signo=siginfo_signo(info), siginfo=info) for info in queued]
    # Pending bits without a queue entry (queue full): what collect_signal() would report.
    seen = {p.signo for p in out}
    for signo in range(1, NSIG + 1):
        if bits & sigbit(signo) and signo not in seen:
            out.append(common_pb2.PendingSignal(signo=signo, siginfo=make_siginfo(signo, SI_USER)))
    return out


def dump_shared_pending(proc: FrozenProcess) -> list[common_pb2.PendingSignal]:
    """The process-wide queue (ShdPnd) as it is now, oldest first, with each raw siginfo."""
    return _pending(proc.main_thread.tid, int(read_status_values(proc.pid, "ShdPnd")[0], 16), shared=True)


def dump_thread_pending(proc: FrozenProcess, tid: int) -> list[common_pb2.PendingSignal]:
    """Signals queued now for thread ``tid`` only (its SigPnd), oldest first."""
    return _pending(proc.thread(tid).tid, int(read_status_values(proc.pid, "SigPnd", tid=tid)[0], 16), shared=False)


def restore(inj: Injector, entry: process_pb2.ProcessEntry, *, scratch: Scratch | None = None) -> None:
    """Dispositions, then the shared pending queue, of ``entry`` into the process of ``inj``."""
    restore_sigactions(inj, entry.sigactions, scratch=scratch)
    restore_pending(inj, entry.shared_pending, scratch=scratch)


def _not_default(st: Status) -> set[int]:
    """Signals whose handler is not SIG_DFL (SigCgt: caught, SigIgn: ignored)."""
    return _signals_in(st.sigcgt | st.sigign)


def _signals_in(bits: int) -> set[int]:
    return {signo for signo in range(1, NSIG + 1) if bits & sigbit(signo)}


def restore_sigactions(inj: Injector, actions: "list[process_pb2.SigAction] | object",
                       *, scratch: Scratch | None = None) -> None:
    """Set the saved dispositions (SIGKILL/SIGSTOP skipped; SIGTRAP last, see the module doc).

    Only where it changes something: a disposition that is not plain SIG_DFL
    in the image, or one the helper has not at SIG_DFL now (it is a copy of
    the restorer, with the restorer's handlers), and SIGCHLD always.
    """
    caught, ignored = (int(v, 16) for v in read_status_values(inj.pid, "SigCgt", "SigIgn"))
    helper = _signals_in(caught | ignored) | {SIGCHLD}
    acts = sorted((a for a in actions if a.signo not in UNCHANGEABLE  # type: ignore[attr-defined]
                   and (a.signo in helper or (a.handler, a.flags, a.restorer, a.mask) != (SIG_DFL, 0, 0, 0))),
                  key=lambda a: a.signo == SIGTRAP)
    with scratch_for(inj, scratch, NSIG * _ACT_SIZE) as s:
        for a in acts:
            if not 1 <= a.signo <= NSIG:
                raise ValueError(f"sigaction for signal {a.signo}: not in 1..{NSIG}")
            s.write((a.signo - 1) * _ACT_SIZE, bytes(kernel_sigaction(a.handler, a.flags, a.restorer, a.mask)))
        for a in acts:
            if a.signo == SIGTRAP and a.handler != SIG_DFL:
                # A forced single-step SIGTRAP resets SIG_IGN, and a handler too while the helper blocks every
                # signal (force_sig_info_to_task): no more single steps in this process (bash catches SIGTRAP).
                inj.single_step = False
                inj.thread.process.sigtrap_ignored = True
            inj.call(NR.rt_sigaction, a.signo, s.addr + (a.signo - 1) * _ACT_SIZE, 0, SIGSET_SIZE,
                     name=f"rt_sigaction({a.signo})")


def restore_pending(inj: Injector, pending: "list[common_pb2.PendingSignal] | object", *, thread: bool = False,
                    scratch: Scratch | None = None) -> None:
    """Queue ``pending`` again, in order: process-wide, or (``thread``) for the injector's thread."""
    items = list(pending)  # type: ignore[call-overload]
    if not items:
        return
    with scratch_for(inj, scratch, SIGINFO_SIZE) as s:
        for p in items:
            info = bytes(p.siginfo)
            if len(info) != SIGINFO_SIZE or siginfo_signo(info) != p.signo:
                raise ValueError(f"pending signal {p.signo}: malformed siginfo ({len(info)} bytes)")
            s.write(0, info)
            if thread:
                inj.call(NR.rt_tgsigqueueinfo, inj.pid, inj.tid, p.signo, s.addr,
                         name=f"rt_tgsigqueueinfo({inj.pid}, {inj.tid}, {p.signo})")
            else:
                inj.call(NR.rt_sigqueueinfo, inj.pid, p.signo, s.addr, name=f"rt_sigqueueinfo({inj.pid}, {p.signo})")
