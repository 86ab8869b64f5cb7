"""Freezing a process: seize every thread, hold it stopped, and put it back exactly.

``with freeze(pid) as proc:`` attaches to every thread with PTRACE_SEIZE
(TRACECLONE so threads created meanwhile are caught too), interrupts each,
and repeats until ``/proc/PID/task`` stops changing (DESIGN §4).  Leaving the
block — normally, by an exception or by Ctrl-C — writes each thread's original
registers back and PTRACE_DETACHes it, so the target carries on as before.

Why putting a thread back needs no syscall-restart fix-up here: every stop the
controller leaves a thread in (the PTRACE_INTERRUPT event-stop, the SIGTRAP of
an injected single step) is reported from inside the kernel's ``get_signal()``.
When such a thread resumes with its original frame (``orig_rax`` >= 0 and
``rax`` = -ERESTART*), the kernel finishes ``arch_do_signal_or_restart()`` on it
and applies its own restart rules: it honours SA_RESTART for a signal that
arrived while frozen, and turns -ERESTART_RESTARTBLOCK into ``restart_syscall``
with the task's own restart block.  Rewriting the frame ourselves instead
(``rip -= 2``, ``orig_rax = -1``) was measured to be worse: a pause()d thread
whose signal arrived while frozen ran its handler and then paused again for
ever, and relative sleeps saw EINTR.  :func:`ckpt.control.inject.syscall_restart_frame`
is for the one path where the kernel skips its rules: resuming with
PTRACE_CONT/PTRACE_SYSCALL from a syscall-exit stop with no signal pending.

Signals: a signal that reaches a thread while it is being seized is let
through (delivered as it would have been) before the thread stops.  While
calls are injected into a target's thread it blocks every signal (its own
mask is put back on release), so one arriving meanwhile stays queued,
untouched; only SIGSTOP (which cannot be blocked) or a signal a call itself
raises is held back and re-sent on release (see :class:`FrozenThread`).
Why a thread's registers are never at risk if ckpt dies meanwhile:
:mod:`ckpt.control.guard`.

seccomp: every thread is seized with PTRACE_O_SUSPEND_SECCOMP when the kernel
grants it (:func:`seize_options`): while ckpt traces it, the calls it injects
pass by its filters and strict mode, which would otherwise answer them with
an error or kill it.  Where the kernel refuses it, a process with a thread
under seccomp is refused before anything is injected.

A thread stopped inside the vDSO's code is let run on and interrupted again
until it is out of it (at most :data:`VDSO_TRIES` times, each run of a random
length, so that the stops do not keep falling at one phase of a loop):
restored on a kernel with another vDSO, it would carry on in a copy of the
old code that reads the old kernel's vvar pages, which are not there
(:mod:`ckpt.resources.vdso`).  A vDSO function takes tens of nanoseconds,
but a thread that spins calling ``clock_gettime`` was measured inside it at
~90 % of its stops here (``rdtsc`` is slow in a VM): 40 tries left one in
it 2 times in 30 dumps.  Run on, not single-stepped: a single step's trap
flag would outlive a killed ckpt (DESIGN §8).
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import interrupts, testpoint
from ..errors import CkptError, TargetGone, Unsupported, translate_oserror
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR, user_regs_struct
from ..kernel.libc import syscall
from ..kernel.ptrace import StopKind, WaitStatus
from ..kernel.sched import sched_getcpu
from ..kernel.vm import ProcMem
from ..procfs.stat import read_stat, read_task_stat
from ..procfs.status import read_status, read_status_values
from ..procfs.task import in_our_pid_namespace, list_tids, read_starttime

if TYPE_CHECKING:
    from .inject import Injector, ProcessGuard

__all__ = [
    "require_our_pid_namespace",
    "SEIZE_OPTIONS", "seize_options", "suspend_granted", "STOP_TIMEOUT", "ThreadSnapshot", "DeferredSignal", "FrozenThread", "FrozenProcess",
    "freeze", "stop_sharing_cpu", "kill_and_collect", "hold_stopped", "unhold", "alive",
]

#: Options for every seized thread: catch new threads, tell syscall stops apart.
SEIZE_OPTIONS = ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_TRACESYSGOOD
#: PTRACE_O_SUSPEND_SECCOMP is granted (None: not asked yet).  Every seize asks for it: while ckpt traces a
#: thread, the syscalls it injects bypass the thread's seccomp filters and strict mode (which would kill the
#: thread for any call but read, write, exit and sigreturn).  The kernel grants it to a tracer with
#: CAP_SYS_ADMIN that is not under seccomp itself (and built with CONFIG_CHECKPOINT_RESTORE); it ends with
#: the trace (PTRACE_DETACH, or ckpt's death).
_suspend_granted: bool | None = None


def seize_options() -> int:
    """:data:`SEIZE_OPTIONS`, with PTRACE_O_SUSPEND_SECCOMP unless the kernel refused it to us."""
    return SEIZE_OPTIONS | (0 if _suspend_granted is False else ptrace.PTRACE_O_SUSPEND_SECCOMP)


def suspend_granted() -> bool:
    """The threads seized so far bypass their seccomp filters and strict mode while ckpt traces them."""
    return _suspend_granted is True


def _seize_thread(tid: int) -> None:
    """PTRACE_SEIZE ``tid`` with :func:`seize_options`; the first refusal of the seccomp suspension is
    told from any other by seizing again without it (both say EPERM)."""
    global _suspend_granted
    if _suspend_granted is False:
        ptrace.seize(tid, SEIZE_OPTIONS)
        return
    try:
        ptrace.seize(tid, SEIZE_OPTIONS | ptrace.PTRACE_O_SUSPEND_SECCOMP)
    except OSError as exc:
        if _suspend_granted or exc.errno not in (errno.EPERM, errno.EINVAL):
            raise
        ptrace.seize(tid, SEIZE_OPTIONS)  # its own EPERM (traced already) goes to the caller
        _suspend_granted = False
        return
    _suspend_granted = True


def _refuse_unsuspended_seccomp(proc: "FrozenProcess") -> None:
    """Without the suspension, a thread under seccomp would meet its filters (or strict mode's SIGKILL) in
    the first injected call: refuse it while nothing has been injected yet."""
    if _suspend_granted is not False:
        return
    for tid in proc.threads:
        try:
            mode = read_status_values(proc.pid, "Seccomp", tid=tid)[0]
        except ValueError:  # a kernel without CONFIG_SECCOMP prints no such line
            return
        if mode != "0":
            raise Unsupported(f"thread {tid} of process {proc.pid} runs under seccomp (mode {mode}) and the "
                              "kernel refused ckpt PTRACE_O_SUSPEND_SECCOMP: the calls ckpt injects would meet "
                              "its filters", hint="run ckpt as root with CAP_SYS_ADMIN, outside any seccomp sandbox")


#: Seconds to wait for a thread to stop (one in uninterruptible sleep may not).
STOP_TIMEOUT = 10.0
#: Seconds of polling for stops with no sleep in between (see _Seizer._collect).
SPIN_SECONDS = 1e-3
#: Seconds a wait for one thread's stop polls before it sleeps (FrozenThread.wait).
WAIT_SPIN_SECONDS = 200e-6
#: Times a thread stopped inside the vDSO is let run on (module doc), and the longest run in seconds.
VDSO_TRIES = 400
VDSO_RUN_SECONDS = 1e-3

_SI_TKILL = -6  # siginfo si_code of tgkill(): may not be forged by another process


def _thread_state(pid: int, tid: int) -> str | None:
    """One-letter state of a thread, or None when it is gone."""
    try:
        return read_task_stat(pid, tid).state
    except TargetGone:
        return None


def _is_tracer_of(tid: int, tracer: int) -> bool:
    try:
        return read_status(tid).tracerpid == tracer  # /proc/TID resolves for any thread
    except TargetGone:
        return False


@dataclass(frozen=True)
class ThreadSnapshot:
    """A thread as it was when seized: the state to put back on release."""

    tid: int
    regs_raw: bytes
    sigmask: int
    stop: WaitStatus  # the event-stop (or group-stop) it was frozen in

    @property
    def regs(self) -> user_regs_struct:
        """A fresh, mutable copy of the saved registers."""
        return user_regs_struct.from_buffer_copy(self.regs_raw)

    @property
    def in_syscall(self) -> bool:
        """Seized inside a syscall (``orig_rax`` >= 0); ``regs.rax`` then holds its return value."""
        return self.regs.orig_rax < (1 << 63)


@dataclass(frozen=True)
class DeferredSignal:
    """A signal dequeued while we injected syscalls; re-sent on release."""

    signo: int
    siginfo: bytes

    @property
    def si_code(self) -> int:
        return int.from_bytes(self.siginfo[8:12], "little", signed=True)


@dataclass
class FrozenThread:
    """One thread held stopped by a :class:`FrozenProcess` (the controller's mutable view).

    ``deferred`` collects signals the thread dequeued while an injected syscall
    was stepped: delivering them then would run a handler on the injected frame.
    On release the first is delivered by PTRACE_DETACH itself (with its original
    siginfo, from the signal-delivery-stop a single step leaves the thread in);
    the rest are queued again with ``rt_tgsigqueueinfo`` (or ``tgkill`` where
    the kernel forbids forging the siginfo, which loses the sender's pid).

    A thread of a restore's helper (``FrozenProcess.pin_cpus``) is held on
    the controller's CPU while syscalls are injected into it
    (:meth:`share_cpu`), its own mask kept in ``home_mask`` and put back
    before it runs (:meth:`unpin`).  A target's mask is never touched.
    """

    process: "FrozenProcess"
    snapshot: ThreadSnapshot
    last_stop: WaitStatus
    regs_changed: bool = False
    gone: bool = False
    #: Resumed by us and not yet waited for (an exception may strike between the two).
    running: bool = False
    deferred: list[DeferredSignal] = field(default_factory=list)
    #: The thread's own CPU set while :meth:`share_cpu` holds it on one CPU; None when not pinned.
    home_mask: set[int] | None = None
    #: The CPU :meth:`share_cpu` last tried (pinned to it, or the kernel refused): -1 for none.
    pin_cpu: int = -1
    #: Every signal blocked while calls are injected (a guarded target; its own mask is in the snapshot).
    signals_held: bool = False
    #: A guarded injected call was loaded and has not reached its syscall-exit stop yet.
    call_open: bool = False
    #: ... and it reached its syscall-entry stop.
    entered: bool = False
    #: Address of the ``rseq_cs`` field of the thread's ``struct rseq``: -1 not asked yet, 0 none.
    rseq_cs_at: int = -1
    #: The thread's own ``rseq_cs`` while :meth:`resume` hid it (None: nothing hidden).
    rseq_cs_hidden: bytes | None = None

    @property
    def tid(self) -> int:
        return self.snapshot.tid

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self) -> WaitStatus:
        """Wait for this thread's next stop and remember it (``gone`` once it exited).

        It polls for :data:`WAIT_SPIN_SECONDS` before sleeping: an injected
        call's stop comes within tens of µs, and a controller still running then
        is not woken from another vCPU (measured: a 16-process dump -R, 108 →
        97 ms; :meth:`share_cpu` is the rest of the way, for helpers only).
        """
        st = None
        end = time.perf_counter() + WAIT_SPIN_SECONDS
        while st is None and time.perf_counter() < end:
            st = ptrace.waitpid(self.tid, os.WNOHANG)
        if st is None:
            st = ptrace.waitpid(self.tid)
        assert st is not None
        self.running = False
        self.last_stop = st
        if st.gone:
            self.gone = True
            self.rseq_cs_hidden = None
        else:
            self._show_rseq_cs()
        return st

    def resume(self, request: Callable[[int, int], None], sig: int = 0) -> None:
        """Resume with ``request`` (ptrace.singlestep, cont, syscall_step); pair with :meth:`wait`.

        The thread's ``rseq_cs`` is hidden until the stop (:meth:`_hide_rseq_cs`).
        """
        self._hide_rseq_cs()
        try:
            request(self.tid, sig)
        except BaseException:
            self._show_rseq_cs()
            raise
        self.running = True

    def _hide_rseq_cs(self) -> None:
        """Zero the thread's ``rseq_cs`` while it runs code of ours (put back by :meth:`wait`).

        A thread that returns to user space inside the critical section its
        ``rseq_cs`` points at is sent to the section's abort handler (after any
        preemption, migration or ptrace stop: every injected call).  A section
        over the instruction ckpt injects through — a hostile program can make
        one cover all of libc and the vDSO — would run the program's code in
        place of ckpt's calls.  Hidden, the kernel sees no section; put back at
        each stop, the memory the dump copies holds the program's own pointer.
        A ckpt killed while a call runs leaves it zero: the kernel's own lazy
        clearing does the same to a thread that left its section.
        """
        if self.rseq_cs_hidden is not None:
            return
        if self.rseq_cs_at < 0:
            try:
                abi = ptrace.get_rseq_configuration(self.tid).rseq_abi_pointer
            except OSError:  # before 5.13 (no PTRACE_GET_RSEQ_CONFIGURATION): nothing ckpt can see
                abi = 0
            self.rseq_cs_at = abi + _RSEQ_CS_OFFSET if abi else 0
        if not self.rseq_cs_at:
            return
        mem = self.process.mem
        try:
            value = mem.read(self.rseq_cs_at, 8)
            if value != _NO_RSEQ_CS:
                mem.write(self.rseq_cs_at, _NO_RSEQ_CS)
                self.rseq_cs_hidden = value
        except OSError:  # its struct rseq is not mapped: the kernel kills the thread on its way out anyway
            pass

    def _show_rseq_cs(self) -> None:
        """Put back the ``rseq_cs`` :meth:`_hide_rseq_cs` hid (the kernel may have cleared it meanwhile)."""
        if self.rseq_cs_hidden is not None:
            self.process.mem.write(self.rseq_cs_at, self.rseq_cs_hidden)
            self.rseq_cs_hidden = None

    def forget_rseq(self) -> None:
        """The thread (un)registered its rseq area through an injected call: ask the kernel again."""
        self.rseq_cs_at = -1

    def share_cpu(self) -> set[int] | None:
        """Put a helper's thread and the calling (controller) thread on one CPU, for one injected syscall.

        Each call is a round trip: resume the thread, wait for its stop.  The
        scheduler wakes each side on an idle CPU when there is one, so on this
        2-vCPU KVM guest the two ends bounce between the vCPUs (measured: a tree
        dump's calls cost ~90 µs; held on one CPU, ~12 µs).  Moving the
        controller alone does not help (the woken thread still goes to the idle
        CPU), so the thread is pinned too — only a restore's helper
        (``process.pin_cpus``): the restore sets its mask anyway, whereas writing
        a target's mask back would make the kernel keep it as a mask the
        program asked for (``user_cpus_ptr``: the thread would not spread to
        CPUs a cpuset gains later).  Returns the controller's own CPU set for
        :func:`stop_sharing_cpu` right after the call (threads it starts later
        must not inherit the pin); None when nothing moved.
        """
        if not self.process.pin_cpus:
            return None
        cpu = sched_getcpu()
        if cpu != self.pin_cpu:
            self.pin_cpu = cpu
            try:
                home = self.home_mask if self.home_mask is not None else os.sched_getaffinity(self.tid)
                os.sched_setaffinity(self.tid, (cpu,))
                self.home_mask = home
            except OSError:  # refused (a cpuset, SCHED_DEADLINE): not tried again on this CPU
                pass
        try:
            own = os.sched_getaffinity(0)
            os.sched_setaffinity(0, (cpu,))
        except OSError:
            return None
        return own

    def inherit_pin(self, parent: "FrozenThread") -> None:
        """A thread just cloned by ``parent`` has its (pinned) mask: its own is ``parent``'s own."""
        self.home_mask, self.pin_cpu = parent.home_mask, parent.pin_cpu

    def unpin(self) -> None:
        """Give the thread its own CPU mask back (before it runs)."""
        home = self.home_mask
        self.drop_pin()
        if home is not None:
            os.sched_setaffinity(self.tid, home)

    def drop_pin(self) -> None:
        """The thread has just been given a mask of its own (an injected sched_setaffinity): nothing to put back."""
        self.home_mask, self.pin_cpu = None, -1

    @property
    def affinity(self) -> set[int]:
        """The thread's own CPU set, pinned or not."""
        return set(self.home_mask) if self.home_mask is not None else os.sched_getaffinity(self.tid)

    def settle(self) -> None:
        """Bring a thread that an exception caught mid-call back to a stop where it can take more calls or go."""
        if self.call_open and (self.running or self.entered):
            self.process.injector(self.tid).complete_call()
        elif self.running:  # interrupted between a resume and its wait: collect the stop first
            st = self.wait()
            if st.kind is StopKind.SIGNAL_DELIVERY and st.stopsig != signal.SIGTRAP:
                self.deferred.append(DeferredSignal(st.stopsig or 0, ptrace.getsiginfo(self.tid)))
        self.call_open = False

    def _put_back(self) -> None:
        """Own mask and registers, deferred signals, PTRACE_DETACH (clears any trap flag).

        A guarded call cut short (an exception between its resume and its
        exit stop) is first run to its exit stop: its registers can only be
        replaced there (at the entry stop, the kernel would still run the
        call with them).
        """
        self.settle()
        if self.gone:
            return
        tid = self.tid
        if self.home_mask is not None:
            try:
                self.unpin()
            except OSError:
                pass  # its mask is not worth leaving it stopped for
        if self.signals_held:  # before the registers: until they change, its frame would restore the mask too
            ptrace.setsigmask(tid, self.snapshot.sigmask)
            self.signals_held = False
            testpoint.point("release.mask")
        if self.regs_changed:
            ptrace.setregs(tid, self.snapshot.regs)
        pending = list(self.deferred)
        detach_sig = 0
        if pending and self.last_stop.kind is StopKind.SIGNAL_DELIVERY:
            first = pending.pop(0)
            ptrace.setsiginfo(tid, first.siginfo)
            detach_sig = first.signo
        for sig in pending:
            _requeue(self.pid, tid, sig)
        ptrace.detach(tid, detach_sig)


#: Offset of ``rseq_cs`` in ``struct rseq`` (after the u32 cpu_id_start and cpu_id), and "no section".
_RSEQ_CS_OFFSET = 8
_NO_RSEQ_CS = bytes(8)


def stop_sharing_cpu(own: set[int] | None) -> None:
    """The calling thread back on its own CPUs after :meth:`FrozenThread.share_cpu`."""
    if own is not None:
        os.sched_setaffinity(0, own)


def _requeue(pid: int, tid: int, sig: DeferredSignal) -> None:
    """Queue ``sig`` on thread ``tid`` again, with its siginfo where the kernel allows it."""
    if sig.si_code < 0 and sig.si_code != _SI_TKILL:
        buf = ctypes.create_string_buffer(sig.siginfo, len(sig.siginfo))
        syscall(NR.rt_tgsigqueueinfo, pid, tid, sig.signo, ctypes.addressof(buf),
                name=f"rt_tgsigqueueinfo({pid}, {tid}, {sig.signo})")
    else:
        syscall(NR.tgkill, pid, tid, sig.signo, name=f"tgkill({pid}, {tid}, {sig.signo})")


class FrozenProcess:
    """Every thread of ``pid`` stopped under our control; see :func:`freeze`."""

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid = pid
        self.start_time = start_time
        self.threads: dict[int, FrozenThread] = {}
        #: Threads that were already zombies (an exited leader of a live group).
        self.zombies: frozenset[int] = frozenset()
        #: SIGTRAP is ignored (or, restoring, caught): no single steps, whose forced SIGTRAP would reset it.
        self.sigtrap_ignored = False
        self._syscall_insn: int | None = None
        self._mem: ProcMem | None = None
        self._injectors: dict[int, Injector] = {}
        self.released = False
        #: A restore's helper: its threads may be pinned to the controller's CPU (FrozenThread.share_cpu).
        self.pin_cpus = False
        #: A target (not one of ckpt's own helpers): every injected call must survive ckpt's death
        #: (ckpt.control.guard); set before the first call.
        self.guarded = True
        self._guard: ProcessGuard | None = None
        #: What the controller did that a user may want to know (e.g. an earlier run's leftovers removed).
        self.notes: list[str] = []

    @classmethod
    def adopt(cls, pid: int, stop: WaitStatus, parent: FrozenThread) -> "FrozenProcess":
        """A process that ``parent`` (a frozen thread) has just forked, auto-attached by PTRACE_O_TRACEFORK.

        It is held in its first stop (``stop``), single-threaded, with the
        ptrace options and the CPU mask of ``parent`` — whose own mask it is
        given back before it runs (:meth:`FrozenThread.inherit_pin`).  No seize
        loop: nothing but us can have made a thread in it.
        """
        proc = cls(pid, read_starttime(pid))
        proc.pin_cpus = parent.process.pin_cpus
        proc.guarded = parent.process.guarded
        regs = ptrace.getregs(pid)
        thread = FrozenThread(proc, ThreadSnapshot(pid, bytes(regs), ptrace.getsigmask(pid), stop), stop)
        thread.inherit_pin(parent)
        proc.threads[pid] = thread
        return proc

    # --- access ---

    @property
    def main_thread(self) -> FrozenThread:
        """The leader if it is alive, else the lowest live tid."""
        if self.pid in self.threads:
            return self.threads[self.pid]
        return self.threads[min(self.threads)]

    def thread(self, tid: int) -> FrozenThread:
        return self.threads[tid]

    @property
    def mem(self) -> ProcMem:
        """/proc/PID/mem opened read-write once (reads and writes any mapped page)."""
        if self._mem is None:
            self._mem = ProcMem(self.pid, writable=True)
        return self._mem

    @property
    def syscall_insn(self) -> int:
        """Address of a ``syscall`` instruction mapped executable in the target (cached)."""
        if self._syscall_insn is None:
            from .inject import find_syscall_insn
            self._syscall_insn = find_syscall_insn(self.pid, self.mem)
        return self._syscall_insn

    def use_syscall_insn(self, addr: int) -> None:
        """Use ``addr`` (a ``syscall`` the caller found, e.g. in the vDSO) instead of searching the mappings."""
        self._syscall_insn = addr

    @property
    def guard(self) -> ProcessGuard:
        """The area and code sequences that make injected calls safe (created on first use)."""
        if self._guard is None:
            from .inject import ProcessGuard
            self._guard = ProcessGuard(self)
        return self._guard

    def own_areas(self) -> list[tuple[int, int]]:
        """Address ranges the controller has mapped in the process (left out of what is dumped)."""
        return self._guard.areas() if self._guard is not None else []

    def injector(self, tid: int | None = None) -> Injector:
        """The (cached) :class:`~ckpt.control.inject.Injector` of ``tid`` (default: main thread)."""
        from .inject import Injector
        t = self.main_thread if tid is None else self.threads[tid]
        if t.tid not in self._injectors:
            self._injectors[t.tid] = Injector(t)
        return self._injectors[t.tid]

    # --- release ---

    def release(self) -> None:
        """Put every thread back and detach it; idempotent.

        SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGPIPE are held off meanwhile: the way
        out is the same for them.  (A death here harms no target: each
        thread not yet put back is parked where it puts itself back,
        :mod:`ckpt.control.guard`.)
        """
        if self.released:
            return
        self.released = True
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        with interrupts.deferred():
            self._release(old)

    def _release(self, old_mask: set[int]) -> None:
        first_error: OSError | None = None

        def put_back(t: FrozenThread) -> None:
            nonlocal first_error
            try:
                t._put_back()
            except OSError as exc:
                if exc.errno == errno.ESRCH:  # killed while frozen: collect it if it is a zombie now
                    _reap_nohang(t.tid)
                elif first_error is None:
                    first_error = exc

        try:
            # The injection area goes last, unmapped by the thread whose frame for it is on its stack:
            # every other thread's frame is in the area, so they are put back (no longer needing it) first.
            closer = self.threads.get(self._guard.closing_tid) if self._guard is not None else None
            for t in self.threads.values():
                if t is not closer:
                    put_back(t)
            if closer is not None:
                try:
                    closer.settle()
                    self._guard.close()
                except OSError as exc:
                    if exc.errno != errno.ESRCH and first_error is None:
                        first_error = exc
                put_back(closer)
            if self._mem is not None:
                self._mem.close()
                self._mem = None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if first_error is not None:
            raise translate_oserror(first_error, self.pid, "releasing") from first_error

    # --- ending ---

    def collect_exit(self) -> None:
        """After SIGKILL: wait for the exit of every thread we trace, non-leaders first (DESIGN §4).

        A traced group leader's exit is not reported while other traced threads
        are zombies; nothing is left to release afterwards.
        """
        for tid in sorted(self.threads, key=lambda t: t == self.pid):
            t = self.threads[tid]
            if t.gone:
                continue
            try:
                while not t.wait().gone:
                    pass
            except ChildProcessError:
                pass
        self._done()

    def collect_if_dead(self, timeout: float = 2.0) -> None:
        """The target died while frozen: collect the exits of the threads we traced, non-leaders first.

        Until the tracer has waited for them, a killed traced thread stays a zombie,
        and the leader is not reported (nor reapable by its parent) while one exists.
        """
        if alive(self.pid):
            return
        deadline = time.monotonic() + timeout
        for tid in sorted(self.threads, key=lambda t: t == self.pid):
            while time.monotonic() < deadline:
                try:
                    st = ptrace.waitpid(tid, os.WNOHANG)
                except ChildProcessError:
                    break
                if st is not None and st.gone:
                    break
                time.sleep(0.002)

    def _done(self) -> None:
        self.released = True
        if self._mem is not None:
            self._mem.close()
            self._mem = None

    def __enter__(self) -> "FrozenProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def kill_and_collect(procs: Sequence[FrozenProcess]) -> None:
    """SIGKILL frozen processes, all before any is waited for (they die side by side), then collect each."""
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.collect_exit()


def hold_stopped(pids: Sequence[int]) -> None:
    """Queue SIGSTOP to frozen processes: whenever they are let go — released, or their tracer dies — the
    first thread to run takes it into a group stop, before any instruction of theirs (a ptrace stop alone
    ends with its tracer; this one survives ckpt's death).  :func:`unhold` takes it back while still frozen."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def unhold(pids: Sequence[int]) -> None:
    """Take back :func:`hold_stopped` while the processes are still frozen: SIGCONT discards a pending stop
    signal as it is sent (a SIGCONT handler of theirs, if any, runs once they are let go)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """``pid`` exists, is not a zombie and is not exiting.

    A killed process's leader is still listed, neither a zombie nor stopped,
    while its memory is freed (its other threads already gone): dead all the same.
    """
    try:
        st = read_task_stat(pid, pid)
    except TargetGone:
        return False
    return st.state not in ("Z", "X") and not st.exiting


def _reap_nohang(tid: int) -> None:
    try:
        ptrace.waitpid(tid, os.WNOHANG)
    except OSError:
        pass


class _Seizer:
    """The seize loop: attach, interrupt, collect stops, until the thread list is stable."""

    def __init__(self, proc: FrozenProcess) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.me = os.getpid()
        self.seized: set[int] = set()
        self.stops: dict[int, WaitStatus] = {}
        self.gone: set[int] = set()
        self.zombies: set[int] = set()
        self.foreign: set[int] = set()  # clone() children that are not threads: detach them
        self.vdso: tuple[int, int] | None = None  # the target's [vdso] (start, end), read when first needed
        self.vdso_runs = 0

    def run(self) -> None:
        while True:
            listing = set(list_tids(self.pid))
            new = listing - self.seized - self.gone - self.zombies
            for tid in sorted(new):
                self._attach(tid)
            if not (self.seized - self.gone) and not self.zombies:
                raise TargetGone(self.pid, f"process {self.pid} exited while seizing it")
            waiting = self.seized - self.gone - set(self.stops)
            if waiting or self.foreign:
                self._collect(waiting)
                continue
            if not new:
                inside = self._inside_vdso()
                if not inside:
                    return  # every listed thread is stopped (out of the vDSO) and the listing did not change
                self._run_on(inside)

    def _inside_vdso(self) -> list[int]:
        """The threads stopped by our interrupt with their ``rip`` in the vDSO ([] once the tries are spent)."""
        if self.vdso_runs >= VDSO_TRIES:
            return []
        inside = []
        for tid, st in self.stops.items():
            if tid in self.gone or st.kind is not StopKind.EVENT_STOP:
                continue  # a group-stopped thread stays as the process's own stop left it
            rip = ptrace.getregs(tid).rip
            if self.vdso is None:
                self.vdso = _vdso_range(self.pid)
            if self.vdso[0] <= rip < self.vdso[1]:
                inside.append(tid)
        return inside

    def _run_on(self, tids: list[int]) -> None:
        """Let ``tids`` run a little (each try longer) and interrupt them again; their stops are collected."""
        for tid in tids:
            del self.stops[tid]
            ptrace.cont(tid, 0)
        time.sleep(random.uniform(VDSO_RUN_SECONDS / 50, VDSO_RUN_SECONDS))
        self.vdso_runs += 1
        for tid in tids:
            try:
                ptrace.interrupt(tid)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise

    def _attach(self, tid: int) -> None:
        state = _thread_state(self.pid, tid)
        if state is None:
            return
        if state in ("Z", "X"):
            self.zombies.add(tid)
            return
        try:
            _seize_thread(tid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return  # exited meanwhile; it drops out of the next listing
            if exc.errno == errno.EPERM and _is_tracer_of(tid, self.me):
                self.seized.add(tid)  # already ours: auto-attached through PTRACE_O_TRACECLONE
                return
            if exc.errno == errno.EPERM and _thread_state(self.pid, tid) in ("Z", "X", None):
                self.zombies.add(tid)
                return
            raise
        self.seized.add(tid)
        try:
            ptrace.interrupt(tid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def _collect(self, waiting: set[int]) -> None:
        """Poll the threads in ``waiting`` (and foreign clones) until each reported something.

        For the first :data:`SPIN_SECONDS` it only yields the CPU between polls:
        an interrupted thread stops within tens of µs, and the shortest sleep
        lasted ~100 µs here (timer slack), a fifth of a seize.
        """
        now = time.monotonic()
        deadline, spin_until = now + STOP_TIMEOUT, now + SPIN_SECONDS
        delay = 20e-6
        pending = set(waiting) | self.foreign
        while pending:
            progressed = False
            spinning = time.monotonic() < spin_until
            for tid in sorted(pending):
                st = ptrace.waitpid(tid, os.WNOHANG)
                if st is None:
                    # An exited leader is not reported while other threads live (its state
                    # is read once the stop is overdue, not on every poll).
                    if not spinning and tid == self.pid and _thread_state(self.pid, tid) in ("Z", "X"):
                        self.zombies.add(tid)
                        self.seized.discard(tid)
                        pending.discard(tid)
                    continue
                progressed = True
                if self._handle(tid, st):
                    pending.discard(tid)
            if not pending:
                return
            if not progressed:
                if spinning:
                    os.sched_yield()
                    continue
                if time.monotonic() > deadline:
                    stuck = {tid: _thread_state(self.pid, tid) for tid in pending}
                    raise CkptError(f"threads of {self.pid} did not stop within {STOP_TIMEOUT:.0f}s: {stuck}")
                time.sleep(delay)
                delay = min(delay * 2, 2e-3)

    def _handle(self, tid: int, st: WaitStatus) -> bool:
        """React to one stop; True when ``tid`` needs no more waiting in this round."""
        kind = st.kind
        if tid in self.foreign:
            if kind in (StopKind.EVENT_STOP, StopKind.GROUP_STOP, StopKind.SIGNAL_DELIVERY):
                ptrace.detach(tid, st.stopsig if kind is StopKind.SIGNAL_DELIVERY else 0)
            self.foreign.discard(tid)
            return True
        if st.gone:
            self.gone.add(tid)
            return True
        if kind in (StopKind.EVENT_STOP, StopKind.GROUP_STOP):
            self.stops[tid] = st
            return True
        sig = 0
        if kind is StopKind.PTRACE_EVENT and st.event == ptrace.PTRACE_EVENT_CLONE:
            child = ptrace.geteventmsg(tid)
            if os.path.exists(f"/proc/{self.pid}/task/{child}"):
                self.seized.add(child)  # a new thread, attached for us; it starts with an event-stop
            else:
                self.foreign.add(child)  # clone() of a new process without SIGCHLD: let it go
        elif kind is StopKind.SIGNAL_DELIVERY:
            sig = st.stopsig or 0  # deliver it now, as without us; the pending interrupt stops it right after
        ptrace.cont(tid, sig)
        ptrace.interrupt(tid)
        return False

    def abandon(self) -> None:
        """After a failure, detach whatever was seized (a thread must be stopped to detach)."""
        for tid in self.seized - self.gone:
            try:
                st = self.stops.get(tid)
                if st is None:
                    ptrace.interrupt(tid)
                    deadline = time.monotonic() + 1.0
                    while st is None and time.monotonic() < deadline:
                        st = ptrace.waitpid(tid, os.WNOHANG)
                        if st is None:
                            time.sleep(1e-4)
                if st is None or st.gone:
                    continue
                ptrace.detach(tid, st.stopsig if st.kind is StopKind.SIGNAL_DELIVERY else 0)
            except OSError:
                pass  # gone meanwhile; our exit would detach anything left


def _vdso_range(pid: int) -> tuple[int, int]:
    """The [vdso] of ``pid`` as (start, end); (0, 0) if it has none."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            for line in f:
                if line.rstrip().endswith(b"[vdso]"):
                    lo, _, hi = line.split(b" ", 1)[0].partition(b"-")
                    return int(lo, 16), int(hi, 16)
    except OSError:
        pass
    return 0, 0


def _seize(pid: int, start_time: int | None) -> FrozenProcess:
    stat = read_stat(pid)  # TargetGone when there is no such process
    current = stat.starttime
    if start_time is not None and current != start_time:
        raise TargetGone(pid, f"process {pid} is not the one seen before (start time {current}, expected {start_time}): the pid was reused")
    if stat.state in ("Z", "X") and set(list_tids(pid)) <= {pid}:
        raise TargetGone(pid, f"process {pid} is a zombie (it exited; its parent has not reaped it)")

    proc = FrozenProcess(pid, current)
    seizer = _Seizer(proc)
    try:
        seizer.run()
        # The pid could have been reused between the first check and the seize.
        if read_starttime(pid) != current:
            raise TargetGone(pid, f"process {pid} was replaced while seizing it")
        for tid, st in sorted(seizer.stops.items()):
            if tid in seizer.gone:
                continue
            regs = ptrace.getregs(tid)
            snap = ThreadSnapshot(tid, bytes(regs), ptrace.getsigmask(tid), st)
            proc.threads[tid] = FrozenThread(proc, snap, st)
        proc.zombies = frozenset(seizer.zombies)
        proc.sigtrap_ignored = _sigtrap_ignored(pid)
        _refuse_unsuspended_seccomp(proc)
    except OSError as exc:
        seizer.abandon()
        raise translate_oserror(exc, pid, "seizing") from exc
    except BaseException:
        seizer.abandon()
        raise
    if not proc.threads:
        raise TargetGone(pid, f"process {pid} has no live thread to seize")
    return proc


def _sigtrap_ignored(pid: int) -> bool:
    """SigIgn has SIGTRAP: a single step's forced SIGTRAP would reset it to SIG_DFL."""
    return bool(int(read_status_values(pid, "SigIgn")[0], 16) & (1 << (signal.SIGTRAP - 1)))


@contextmanager
def freeze(pid: int, *, start_time: int | None = None, guarded: bool = True) -> Iterator[FrozenProcess]:
    """Stop every thread of ``pid`` for the duration of the ``with`` block.

    ``start_time`` (field 22 of /proc/PID/stat, :func:`ckpt.procfs.task.read_starttime`)
    makes sure the pid still names the process seen earlier.  Raises
    :class:`~ckpt.errors.TargetGone` / :class:`~ckpt.errors.AccessDenied`.
    ``guarded``: a target, which must survive ckpt's death at any instant —
    its area for safe injected calls is mapped now (removing any that a
    killed run left), so that maps read from here on can leave it out
    (:meth:`FrozenProcess.own_areas`).  False for ckpt's own restore helpers.
    """
    proc: FrozenProcess | None = None
    try:
        with interrupts.deferred():  # a Ctrl-C is raised once the threads are seized (and known to be)
            proc = _seize(pid, start_time)
            proc.guarded = guarded
            if guarded:
                proc.guard.open()
        yield proc
    finally:
        if proc is not None:
            proc.release()


def require_our_pid_namespace(pid: int) -> None:
    """Unsupported for a process of a nested PID namespace: its image must be taken from inside."""
    if not in_our_pid_namespace(pid):
        raise Unsupported(f"process {pid} is in another PID namespace: from out here its pids and tids are "
                          "not the ones its memory holds",
                          hint=f"run ckpt inside that namespace (nsenter -t {pid} -p -m ckpt ...) with the pid "
                               f"it has there (the last field of NSpid in /proc/{pid}/status)")
