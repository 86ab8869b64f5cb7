"""Running single syscalls inside a stopped thread of the target, without parasite code.

An :class:`Injector` points the thread's ``rip`` at a ``syscall`` instruction
that is already mapped executable, loads ``rax`` and the argument registers,
sets ``orig_rax = -1`` and lets it run to the end of that one syscall.  The
thread's own registers are written back when the
:class:`~ckpt.control.seize.FrozenProcess` releases it.

Two ways, by who the thread belongs to:

* a **target** (``process.guarded``) must survive ckpt's death at any instant:
  each call runs through a ``syscall; ret`` sequence into rt_sigreturn over a
  frame of the thread's own context, between PTRACE_SYSCALL entry and exit
  stops, with every signal blocked (:mod:`ckpt.control.guard`, and
  :class:`ProcessGuard` here).  No single step, so no trap flag is ever armed.
* a restore's **helper** (ckpt's own, killed with it: PTRACE_O_EXITKILL) runs
  calls at the restorer's trampoline or the vDSO by single steps: the SIGTRAP
  stop after the instruction holds the result in ``rax`` (DESIGN §3), one
  round trip instead of two.

Every call is a
round trip between the thread and the controller: a restore's helper shares
the controller's CPU meanwhile (FrozenThread.share_cpu), ~8x cheaper without
cross-CPU wake-ups; a target's mask is not ours to change, so what a dump
asks every process of a tree is asked of all of them at once instead
(:class:`Query`, :func:`ask_all`): their wake-ups overlap.

Single-stepping makes the kernel *force* a SIGTRAP, which resets a SIGTRAP
disposition of SIG_IGN to SIG_DFL (kernel/signal.c, force_sig_info_to_task).
For a helper that ignores SIGTRAP the injector therefore runs each syscall
between PTRACE_SYSCALL entry/exit stops instead, and parks the thread in a
PTRACE_INTERRUPT stop afterwards; so does it for a target in which no
``syscall; ret`` / rt_sigreturn pair or no stack room for a frame is found
(its own registers then go back after every call: only the call itself is
exposed to ckpt's death).
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from .. import interrupts, testpoint
from ..errors import CkptError, TargetError
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR, PAGE_SIZE, SYSCALL_ARG_REGS, SYSCALL_INSN, TASK_SIZE_MAX, user_regs_struct
from ..kernel.mman import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from ..kernel.ptrace import StopKind
from ..kernel.sigframe import frame_size, rt_sigframe
from ..kernel.vm import ProcMem
from ..procfs.maps import Vma, read_maps
from . import guard
from .seize import DeferredSignal, FrozenProcess, FrozenThread, stop_sharing_cpu

__all__ = [
    "ERESTARTSYS", "ERESTARTNOINTR", "ERESTARTNOHAND", "ERESTART_RESTARTBLOCK", "MAX_ERRNO",
    "syscall_restart_frame", "find_syscall_insn", "Injector", "Scratch", "injected_syscalls", "injected_by_syscall",
    "Query", "OUT", "ask_all", "ProcessGuard", "ALL_SIGNALS",
]

# Kernel-internal errnos a syscall returns when a signal interrupts it
# (include/linux/errno.h); user space never sees them unless a tracer leaks them.
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
#: Results in [-MAX_ERRNO, -1] are errors (include/linux/err.h).
MAX_ERRNO = 4095

_U64 = (1 << 64) - 1
#: The wait status of every SIGTRAP signal-delivery-stop, the one a single step ends in among them
#: (WIFSTOPPED, SIGTRAP, no event: a syscall stop has SIGTRAP | 0x80, an event stop its event above).
_STEP_TRAP = (signal.SIGTRAP << 8) | 0x7F
_NO_SYSCALL = _U64  # orig_rax = -1: "not in a syscall", so the kernel does no restart handling
#: A blocked mask with every signal (the kernel leaves SIGKILL and SIGSTOP out itself).
ALL_SIGNALS = _U64


#: Syscalls injected by this process so far, by syscall name (the label up to its first "(":
#: "rt_sigaction(10)" counts as rt_sigaction), every Injector and target together.  Each one
#: costs a ptrace round trip (setregs, a step, a wait, getregs: tens of µs), so their number is
#: what a per-process fixed cost is made of; one dict update per call is noise beside it.  Read
#: it with :func:`injected_syscalls` before and after an operation (bench/tree.py reports them
#: per process of a tree).
_INJECTED: Counter[str] = Counter()


def injected_syscalls() -> int:
    """How many syscalls this process has injected so far (a failed one counts: it ran in the target)."""
    return sum(_INJECTED.values())


def injected_by_syscall() -> dict[str, int]:
    """The same count per syscall name (a copy): which calls an operation's fixed cost is made of."""
    return dict(_INJECTED)


_NAMES: dict[int, str] = {}


def _syscall_name(nr: int) -> str:
    """``NR(nr).name`` (an Enum lookup costs a µs; this is on every injected call), cached."""
    name = _NAMES.get(nr)
    if name is None:
        name = _NAMES[nr] = NR(nr).name if nr in NR._value2member_map_ else f"syscall {nr}"
    return name


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def syscall_restart_frame(regs: user_regs_struct) -> user_regs_struct:
    """The frame to resume a thread with when the kernel will not finish an interrupted syscall.

    A thread stopped while blocked in a syscall shows ``orig_rax`` = the syscall
    and ``rax`` = -ERESTART*.  Normally the kernel rewrites that frame on its way
    back to user space through ``get_signal()`` — which every ptrace stop the
    controller uses, and PTRACE_DETACH itself, lead through.  A thread resumed
    with PTRACE_CONT or PTRACE_SYSCALL from a syscall-exit stop while no signal
    is pending skips that step, and the program sees errno 512 (measured; see
    tests/kernel/test_inject.py).  For such a resume (the restorer's final frame
    set at the trampoline's syscall-exit stop is the case in view), redo here
    what arch_do_signal_or_restart() does when no handler runs for
    -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND: ``rax = orig_rax; rip -= 2``
    (back onto the 2-byte ``syscall`` instruction: it runs again), ``orig_rax =
    -1`` so the kernel does not apply the rules a second time.

    -ERESTART_RESTARTBLOCK (relative sleeps, timed futex waits) is left as it
    is: the kernel's restart block lives in the old task, and how such a call
    resumes after a restore is :mod:`ckpt.resources.blocked`'s decision.  So is
    anything else — not in a syscall, or caught at syscall *exit* with its real
    result: rewinding it would run the syscall twice.  Returns a new frame.
    """
    return guard.rewound(regs, (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND))


def _executable_mappings(vmas: Sequence[Vma]) -> list[Vma]:
    """Readable, executable mappings below TASK_SIZE_MAX ([vsyscall] is not readable), [vdso] first."""
    found = [v for v in vmas if v.exec and v.read and v.end <= TASK_SIZE_MAX]
    found.sort(key=lambda v: v.path != "[vdso]")
    return found


def find_syscall_insn(pid: int, mem: ProcMem, vmas: Sequence[Vma] | None = None) -> int:
    """Address of a ``syscall`` (0f 05) byte pair in an executable mapping, the vDSO first.

    Any such pair will do, even inside another instruction: the CPU decodes
    from wherever ``rip`` points.  ``vmas``: the target's mappings if the
    caller has them (read now otherwise).
    """
    chunk = 1 << 20
    for vma in _executable_mappings(read_maps(pid) if vmas is None else vmas):
        addr = vma.start
        while addr < vma.end:
            n = min(chunk + 1, vma.end - addr)  # +1 so a pair split across chunks is seen
            data = mem.read(addr, n)
            i = data.find(SYSCALL_INSN)
            if i >= 0:
                return addr + i
            addr += chunk
    raise CkptError(f"no syscall instruction found in the executable mappings of process {pid}")


@dataclass(frozen=True)
class Scratch:
    """An anonymous read-write area mapped in the target by :meth:`Injector.scratch`."""

    addr: int
    size: int
    mem: ProcMem

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.mem.read(self.addr + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self.mem.write(self.addr + offset, data)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise ValueError(f"scratch access {offset}+{length} outside its {self.size} bytes")


class Injector:
    """Runs syscalls inside one frozen thread; obtain it from ``FrozenProcess.injector()``.

    ``syscall_insn`` overrides the instruction used (the restorer's trampoline).

    Caveats: a thread seized in a relative sleep (-ERESTART_RESTARTBLOCK) is
    resumed through ``restart_syscall``, which reads the task's restart block;
    injecting a syscall that sets one (nanosleep, a timed futex wait, poll)
    into that thread would replace it.  And moving ``rip`` out of an rseq
    critical section lets the kernel clear the thread's ``rseq_cs`` pointer, so
    a section interrupted there is not aborted on resume (glibc itself has none).
    """

    def __init__(self, thread: FrozenThread, *, syscall_insn: int | None = None) -> None:
        self.thread = thread
        self._insn = syscall_insn
        #: (PTRACE_EVENT_*, event message) seen during the last call, e.g. the new tid of a clone.
        self.events: list[tuple[int, int]] = []
        #: A target's thread: calls go through the process's guard (its own ``syscall_insn`` is not used).
        self.guarded = thread.process.guarded and syscall_insn is None
        self.single_step = not self.guarded and not thread.process.sigtrap_ignored
        #: Answers of queries asked ahead by :func:`ask_all`, taken by :meth:`ask` (once each).
        self.answers: dict[str, tuple[int, bytes] | OSError] = {}
        #: The loaded call as the kernel should report its entry: (nr, args, address after the instruction).
        self.expected: tuple[int, tuple[int, ...], int] = (-1, (), 0)
        #: Why the call that ran was not the one loaded (None: it was), see :meth:`_check_entry`.
        self.foreign: str | None = None

    @property
    def pid(self) -> int:
        return self.thread.pid

    @property
    def tid(self) -> int:
        return self.thread.tid

    @property
    def syscall_insn(self) -> int:
        if self._insn is None:
            self._insn = self.thread.process.syscall_insn
        return self._insn

    def call(self, nr: int, *args: int, name: str | None = None) -> int:
        """Run syscall ``nr`` with up to six integer ``args`` in the thread; the raw result.

        A result in [-4095, -1] raises ``OSError(-result, "injected NAME(...) in PID/TID: ...")``.
        """
        return self._call(nr, args, name)

    def _call(self, nr: int, args: Sequence[int], name: str | None, *, frame: int | None = None) -> int:
        """:meth:`call`; ``frame``: the guarded call's frame is there (the guard's first and last calls)."""
        with interrupts.deferred():  # a Ctrl-C between a resume and its wait would lose track of a stop
            label = self._load(nr, args, name, frame=frame)
            own_cpus = self.thread.share_cpu()
            try:
                out = self._run(label)
            finally:
                stop_sharing_cpu(own_cpus)
                if nr == NR.rseq:
                    self.thread.forget_rseq()
        return self._result(out, label, args)

    def _run(self, label: str, *, started: bool = False) -> user_regs_struct:
        """Run the loaded call to its end (``started``: the thread was resumed already); its registers then."""
        t = self.thread
        if t.call_open:
            return self._finish_guarded(label)
        if self.single_step:
            if not started:
                t.resume(ptrace.singlestep)
            return self._finish_single_step(label)
        out = self._run_syscall_stops(label)
        if self.guarded:  # a target without a guard: its own registers back between calls
            ptrace.setregs(self.tid, t.snapshot.regs)
            t.regs_changed = False
        return out

    def _load(self, nr: int, args: Sequence[int], name: str | None, *, frame: int | None = None) -> str:
        """Check the thread and give it the registers of the call (it runs when resumed); the call's label.

        A guarded call (``thread.call_open`` afterwards) starts at the guard's
        ``syscall; ret`` with ``rsp`` at the thread's frame, every signal blocked.
        """
        if len(args) > len(SYSCALL_ARG_REGS):
            raise ValueError(f"a syscall takes at most {len(SYSCALL_ARG_REGS)} arguments")
        label = name or _syscall_name(nr)
        t = self.thread
        if t.gone:
            raise OSError(errno.ESRCH, f"injected {label} in {self.pid}/{self.tid}: thread exited")
        chain = None
        if self.guarded:
            g = t.process.guard
            chain = g.chain
            if chain is not None and frame is None:
                frame = g.frame(t)  # may inject the area's mmap first
                chain = g.chain  # (None if that found no room)
        regs = t.snapshot.regs
        if chain is not None and frame is not None:
            regs.rip = chain.syscall_ret
            regs.rsp = frame
        else:
            regs.rip = self.syscall_insn
        regs.rax = nr
        regs.orig_rax = _NO_SYSCALL
        for reg, value in zip(SYSCALL_ARG_REGS, args):
            setattr(regs, reg, value & _U64)
        self.expected = (nr, tuple(a & _U64 for a in args), regs.rip + len(SYSCALL_INSN))
        self.foreign = None
        ptrace.setregs(self.tid, regs)
        t.regs_changed = True
        if chain is not None and frame is not None:
            if not t.signals_held:  # after the registers: from here its frame restores its own mask
                ptrace.setsigmask(self.tid, ALL_SIGNALS)
                t.signals_held = True
            t.call_open, t.entered = True, False
            testpoint.point("inject.loaded")
        self.events = []
        _INJECTED[label.partition("(")[0]] += 1
        return label

    def _result(self, out: user_regs_struct, label: str, args: Sequence[int]) -> int:
        result = _signed(out.rax)
        if -MAX_ERRNO <= result < 0:
            err = -result
            if err in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK):
                err = errno.EINTR
            shown = ", ".join(hex(a) if a > 0xFFFF else str(a) for a in args)
            raise OSError(err, f"injected {label}({shown}) in {self.pid}/{self.tid}: {os.strerror(err)}")
        return result

    def ask(self, q: "Query", scratch: Scratch | None = None) -> tuple[int, bytes]:
        """Run query ``q`` (result, output bytes) — or take its answer if :func:`ask_all` got it already.

        ``scratch``: where its output goes when asked here (at its start).
        """
        got = self.answers.pop(q.name, None)
        if isinstance(got, OSError):
            raise got
        if got is not None:
            return got
        if not q.out:
            return self.call(q.nr, *q.args, name=q.name), b""
        if scratch is None or scratch.size < q.out:
            raise ValueError(f"{q.name} needs {q.out} bytes of scratch")
        result = self.call(q.nr, *q.resolve(scratch.addr), name=q.name)
        return result, scratch.read(0, q.out)

    def _check_entry(self, label: str) -> None:
        """At the call's syscall-entry stop: is it the call loaded, entered from our instruction?

        PTRACE_GET_SYSCALL_INFO is the kernel's own account of what the thread
        entered.  Anything else (the target's code ran first: an rseq abort
        handler, a signal handler, a syscall user dispatch) would answer in
        our call's place; the call is still taken to its exit stop, so the
        thread is where a finished call leaves it, and then refused
        (:meth:`_refuse_foreign`).
        """
        got = ptrace.get_syscall_entry(self.tid)
        nr, args, ip = self.expected
        if got.op != ptrace.PTRACE_SYSCALL_INFO_ENTRY:
            self.foreign = f"the stop after it is not a syscall entry (op {got.op})"
        elif got.nr != nr or got.args[:len(args)] != args or got.instruction_pointer != ip:
            self.foreign = (f"the kernel entered syscall {_syscall_name(got.nr)} from {got.instruction_pointer:#x} "
                            f"with {[hex(a) for a in got.args[:len(args)]]}")

    def _refuse_foreign(self, label: str) -> None:
        if self.foreign is not None:
            raise TargetError(self.pid, f"process {self.pid}, thread {self.tid}: injected {label}, but "
                                        f"{self.foreign}: the process ran its own code in place of ckpt's call; "
                                        "refusing to record what it answered")

    def _stopped(self, label: str) -> ptrace.WaitStatus:
        st = self.thread.wait()
        if st.gone:
            raise OSError(errno.ESRCH, f"injected {label} in {self.pid}/{self.tid}: thread exited ({st})")
        return st

    def _defer(self, st: ptrace.WaitStatus) -> None:
        """Hold back a signal dequeued before our instruction ran (see FrozenThread)."""
        self.thread.deferred.append(DeferredSignal(st.stopsig or 0, ptrace.getsiginfo(self.tid)))

    def _finish_single_step(self, label: str) -> user_regs_struct:
        """Wait for the resumed single step to end after the ``syscall``; its registers."""
        insn = self.syscall_insn
        while True:
            st = self._stopped(label)
            if st.status == _STEP_TRAP:  # the SIGTRAP signal-delivery-stop, told apart without decoding it
                regs = ptrace.getregs(self.tid)
                if regs.rip == insn + len(SYSCALL_INSN):
                    return regs
                self._defer(st)  # not our step's: a SIGTRAP dequeued before our instruction ran
            else:
                kind = st.kind
                if kind is StopKind.SIGNAL_DELIVERY:
                    self._defer(st)
                elif kind is StopKind.PTRACE_EVENT:
                    self.events.append((st.event, ptrace.geteventmsg(self.tid)))
                # an event-stop, group-stop or syscall stop that is not ours: step again
            self.thread.resume(ptrace.singlestep)

    def _finish_guarded(self, label: str) -> user_regs_struct:
        """Run a loaded guarded call to its syscall-exit stop (resuming it if need be); its registers.

        The thread stays there: resumed without us, it would ``ret`` into
        rt_sigreturn and be itself again (see :mod:`ckpt.control.guard`).
        """
        t = self.thread
        while True:
            if not t.running:
                t.resume(ptrace.syscall_step)
            st = self._stopped(label)
            kind = st.kind
            if kind is StopKind.SYSCALL:
                if t.entered:
                    t.call_open = False
                    testpoint.point("inject.done")
                    self._refuse_foreign(label)
                    return ptrace.getregs(self.tid)
                self._check_entry(label)
                t.entered = True
                testpoint.point("inject.entered")
            elif kind is StopKind.SIGNAL_DELIVERY:  # SIGSTOP or a fault's signal: the rest are blocked
                self._defer(st)
            elif kind is StopKind.PTRACE_EVENT:
                self.events.append((st.event, ptrace.geteventmsg(self.tid)))

    def complete_call(self) -> None:
        """Take a guarded call cut short (by an exception) to its exit stop, its result dropped."""
        if self.thread.call_open:
            self._finish_guarded("an interrupted call")

    def _run_syscall_stops(self, label: str) -> user_regs_struct:
        entered = False
        while True:
            self.thread.resume(ptrace.syscall_step)
            st = self._stopped(label)
            kind = st.kind
            if kind is StopKind.SYSCALL:
                if entered:
                    regs = ptrace.getregs(self.tid)
                    break
                self._check_entry(label)
                entered = True
            elif kind is StopKind.SIGNAL_DELIVERY:
                self._defer(st)
            elif kind is StopKind.PTRACE_EVENT:
                self.events.append((st.event, ptrace.geteventmsg(self.tid)))
        # Park the thread in an interrupt stop, inside get_signal(), like a freshly seized one.
        ptrace.interrupt(self.tid)
        while True:
            self.thread.resume(ptrace.cont)
            st = self._stopped(label)
            if st.kind in (StopKind.EVENT_STOP, StopKind.GROUP_STOP):
                self._refuse_foreign(label)
                return regs
            if st.kind is StopKind.SIGNAL_DELIVERY:
                self._defer(st)

    # --- helpers, named after the syscalls ---

    def getpid(self) -> int:
        return self.call(NR.getpid)

    def gettid(self) -> int:
        return self.call(NR.gettid)

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        return self.call(NR.mmap, addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.call(NR.munmap, addr, length)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self.call(NR.mprotect, addr, length, prot)

    def madvise(self, addr: int, length: int, advice: int) -> None:
        self.call(NR.madvise, addr, length, advice)

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        return self.call(NR.fcntl, fd, cmd, arg)

    def close(self, fd: int) -> None:
        self.call(NR.close, fd)

    def receive(self, ours: int, what: str = "") -> int:
        """Our descriptor ``ours`` installed in the target (one open file, shared), as a new close-on-exec fd:
        ``pidfd_getfd`` of the restorer, injected."""
        pidfd = self.call(NR.pidfd_open, os.getpid(), 0, name="pidfd_open(restorer)")
        try:
            return self.call(NR.pidfd_getfd, pidfd, ours, 0, name=f"pidfd_getfd({what or ours})")
        finally:
            self.close(pidfd)

    def userfaultfd(self, flags: int = os.O_CLOEXEC) -> int:
        """A userfaultfd created *by the target*, so it acts on the target's memory."""
        return self.call(NR.userfaultfd, flags)

    @contextmanager
    def scratch(self, size: int) -> Iterator[Scratch]:
        """An anonymous RW area of ``size`` bytes (page-rounded) in the target for the block.

        In a target, the guard's area lends its buffer when it is free and big
        enough (no call at all); otherwise an area is mapped and unmapped after.
        """
        if self.guarded:
            lent = self.thread.process.guard.lend_scratch(size)
            if lent is not None:
                try:
                    yield lent
                finally:
                    self.thread.process.guard.return_scratch()
                return
        length = -(-size // PAGE_SIZE) * PAGE_SIZE
        addr = self.mmap(0, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        try:
            yield Scratch(addr, length, self.thread.process.mem)
        finally:
            if not self.thread.gone:
                self.munmap(addr, length)


# --- queries asked of many processes at once ---


@dataclass(frozen=True)
class Query:
    """A syscall that only reads (a ``prctl(PR_GET_…)``, ``sigaltstack(0, &old)``…), named for its answer.

    ``out`` > 0: it writes that many bytes, at the address given in place of
    :data:`OUT` among ``args``.  Resource modules declare theirs, so a dump can
    ask them of every process of a tree at once (:func:`ask_all`) and each
    module still asks for its own answer (:meth:`Injector.ask`).
    """

    name: str
    nr: int
    args: tuple[int, ...]
    out: int = 0

    def resolve(self, addr: int) -> tuple[int, ...]:
        """The arguments, with the output buffer at ``addr``."""
        return tuple(addr if a == OUT else a for a in self.args)


#: Placeholder for a query's output-buffer address (an int nobody passes: -2**63).
OUT = -(1 << 63)


def ask_all(lanes: Sequence[tuple[Injector, Scratch, Sequence[Query]]]) -> None:
    """See :func:`_ask_all`; a Ctrl-C meanwhile is raised once every thread is stopped again."""
    with interrupts.deferred():
        _ask_all(lanes)


def _ask_all(lanes: Sequence[tuple[Injector, Scratch, Sequence[Query]]]) -> None:
    """Ask every lane's queries, the k-th query of every lane at once; :meth:`Injector.ask` takes the answers.

    A lane is a thread (of any process) with the scratch area of its process;
    lanes of one process share the area, each query's output gets its own
    part of it.  Why at once: each injected call is a ptrace round trip whose
    cost here is mostly the wake-up of the other vCPU (~50 µs; a target's CPU
    mask is not ours to pin, see FrozenThread.share_cpu).  Resumed one after
    the other and then waited for, the threads of a tree overlap those
    waits.  A query that fails, or that finds its thread gone, keeps its
    error as its answer; one that does not fit the area is left to be asked
    later.  A helper's thread that cannot take single steps (SIGTRAP ignored)
    or is pinned, or a target's without a guard, gets its queries one by one.
    """
    used: dict[tuple[int, int], int] = {}  # by (pid, address): the forks of a tree map theirs at one address
    plans: list[tuple[Injector, Scratch, list[tuple[Query, int]]]] = []
    for inj, scratch, queries in lanes:
        area = (inj.pid, scratch.addr)
        at = used.get(area, 0)
        plan = []
        for q in queries:
            if at + q.out > scratch.size:
                break
            plan.append((q, at))
            at += -(-q.out // 8) * 8
        used[area] = at
        plans.append((inj, scratch, plan))
    results: dict[tuple[int, str], tuple[int, int]] = {}  # (tid, name) -> (result, offset)
    for k in range(max((len(p) for _, _, p in plans), default=0)):
        started: list[tuple[Injector, Query, int, tuple[int, ...], str]] = []
        try:
            for inj, scratch, plan in plans:
                if k >= len(plan):
                    continue
                q, off = plan[k]
                args = q.resolve(scratch.addr + off)
                t = inj.thread
                if not (inj.single_step or inj.guarded) or t.process.pin_cpus:
                    try:
                        results[(inj.tid, q.name)] = (inj.call(q.nr, *args, name=q.name), off)
                    except OSError as exc:
                        inj.answers[q.name] = exc
                    continue
                try:
                    label = inj._load(q.nr, args, q.name)
                    if t.call_open:
                        t.resume(ptrace.syscall_step)
                    elif inj.single_step:
                        t.resume(ptrace.singlestep)
                    else:  # a target without a guard: one by one
                        results[(inj.tid, q.name)] = (inj._result(inj._run(label), label, args), off)
                        continue
                except OSError as exc:
                    inj.answers[q.name] = exc
                    continue
                started.append((inj, q, off, args, label))
        finally:
            refused: TargetError | None = None
            for inj, q, off, args, label in started:  # every resumed thread is waited for, whatever happens
                try:
                    results[(inj.tid, q.name)] = (inj._result(inj._run(label, started=True), label, args), off)
                except OSError as exc:
                    inj.answers[q.name] = exc
                except TargetError as exc:  # a call the process answered itself: the others are still waited for
                    refused = refused or exc
            if refused is not None:
                raise refused
    outs: dict[tuple[int, int], bytes] = {}
    for inj, scratch, plan in plans:
        area = (inj.pid, scratch.addr)
        if area not in outs and used.get(area):
            outs[area] = scratch.read(0, used[area])
        for q, _ in plan:
            got = results.get((inj.tid, q.name))
            if got is not None:
                result, off = got
                inj.answers[q.name] = (result, outs[area][off:off + q.out] if q.out else b"")


# --- the guard: calls into a target that ckpt's death cannot turn into harm ---

#: Room below the first frame on the stack for the area's memfd name.
_NAME_ROOM = 64
#: memfd_create(2): close the descriptor on exec.
MFD_CLOEXEC = 0x1


class ProcessGuard:
    """The area and code sequences that let every injected call of one target end in its own context.

    See :mod:`ckpt.control.guard` for why and how.  :meth:`open` maps the area
    (the first call, its frame on a thread's stack) and removes areas a killed
    run left; :meth:`frame` writes a thread's frame into it; :meth:`close`
    unmaps it (the last call, again from a stack frame).  ``chain`` is None
    when the target maps no usable code sequences or has no room for the
    first frame: its calls then run unguarded, one at a time, its registers
    put back after each.
    """

    def __init__(self, proc: FrozenProcess) -> None:
        self.proc = proc
        self.chain: guard.Chain | None = None
        self.layout: guard.AreaLayout | None = None
        self.addr = 0
        self._opened = False
        self._frames: dict[int, int] = {}
        self._slot: tuple[int, int] | None = None  # (tid, address) of the stack frame used for the area's own calls
        self._scratch_lent = False

    def areas(self) -> list[tuple[int, int]]:
        return [(self.addr, self.addr + self.layout.size)] if self.addr and self.layout else []

    def open(self) -> None:
        """Map the area (once) and unmap any an earlier, killed run left in the process."""
        if self._opened:
            return
        self._opened = True
        proc = self.proc
        vmas = read_maps(proc.pid)
        self.chain = guard.find_chain(proc.mem, vmas)
        if self.chain is None:
            return
        fbytes = frame_size(ptrace.xstate_size(proc.main_thread.tid))  # one size for every thread
        slot = self._stack_slot(vmas, _NAME_ROOM + fbytes)
        if slot is None:
            self.chain = None
            return
        layout = guard.AreaLayout.for_threads(len(proc.threads), fbytes)
        tid, base = slot
        at = base + _NAME_ROOM
        proc.mem.write(base, guard.AREA_NAME.encode() + b"\0")
        proc.mem.write(at, self._frame_bytes(proc.threads[tid], at))
        self._slot = (tid, at)
        inj = proc.injector(tid)
        try:
            fd = inj._call(NR.memfd_create, (base, MFD_CLOEXEC), "memfd_create(injection area)", frame=at)
            try:
                inj._call(NR.ftruncate, (fd, layout.size), "ftruncate(injection area)", frame=at)
                self.addr = inj._call(NR.mmap, (0, layout.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
                                      "mmap(injection area)", frame=at)
                self.layout = layout
            finally:
                inj._call(NR.close, (fd,), "close(injection area)", frame=at)
        except OSError as exc:  # refused (a seccomp filter, a memory limit): calls run unguarded
            if exc.errno == errno.ESRCH:
                raise
            self.chain = None
            t = proc.threads[tid]
            if t.signals_held:  # its own mask and registers back, as unguarded calls keep them between calls
                ptrace.setsigmask(tid, t.snapshot.sigmask)
                t.signals_held = False
            ptrace.setregs(tid, t.snapshot.regs)
            t.regs_changed = False
            proc.notes.append(f"process {proc.pid} refused ckpt's injection area ({exc.strerror}): its injected "
                              "calls are not guarded against ckpt's death")
            return
        for old in guard.leftover_areas(vmas):
            inj.munmap(old.start, old.size)
            proc.notes.append(f"removed an injection area ({old.size // PAGE_SIZE} pages at {old.start:#x}) "
                              f"that a killed ckpt run had left in process {proc.pid}")
        for fd in guard.leftover_fds(proc.pid):
            inj.close(fd)
            proc.notes.append(f"closed the descriptor {fd} of an injection area that a killed ckpt run had left "
                              f"in process {proc.pid}")

    def _stack_slot(self, vmas: Sequence[Vma], size: int) -> tuple[int, int] | None:
        """A thread whose stack has room for a frame below its red zone, and where: (tid, address)."""
        ordered = sorted(self.proc.threads.values(), key=lambda t: t.tid != self.proc.pid)
        for t in ordered:
            at = guard.stack_slot(vmas, t.snapshot.regs.rsp, size)
            if at is not None:
                return t.tid, at
        return None

    def _frame_bytes(self, t: FrozenThread, at: int) -> bytes:
        assert self.chain is not None
        return rt_sigframe(at, self.chain.sigreturn, guard.resume_context(t.snapshot.regs), t.snapshot.sigmask,
                           ptrace.get_xstate(t.tid))

    def frame(self, t: FrozenThread) -> int | None:
        """The address of ``t``'s frame in the area (written on first use); None if calls run unguarded."""
        at = self._frames.get(t.tid)
        if at is not None:
            return at
        self.open()
        if self.chain is None or self.layout is None:
            return None
        index = len(self._frames)
        if index >= self.layout.frames:
            raise CkptError(f"no frame left for thread {t.tid} in the injection area of process {self.proc.pid}")
        at = self.addr + self.layout.frame_offset + index * self.layout.frame_size
        self.proc.mem.write(at, self._frame_bytes(t, at))
        self._frames[t.tid] = at
        return at

    def lend_scratch(self, size: int) -> Scratch | None:
        """The area's buffer for the calls' outputs, if free and ``size`` fits; give it back after."""
        self.open()
        if self.layout is None or self._scratch_lent or size > self.layout.scratch_size:
            return None
        self._scratch_lent = True
        return Scratch(self.addr + self.layout.scratch_offset, self.layout.scratch_size, self.proc.mem)

    def return_scratch(self) -> None:
        self._scratch_lent = False

    @property
    def closing_tid(self) -> int:
        """The thread that unmaps the area (its frame for that is on its stack), or -1 when there is none."""
        return self._slot[0] if self._slot is not None and self.addr else -1

    def close(self) -> None:
        """Unmap the area: the last call, made from a frame on the stack again (the area's own goes away).

        Every other thread must have been put back first (its frame is in the area).
        """
        if not self.addr or self.layout is None or self._slot is None:
            return
        addr, size = self.addr, self.layout.size
        tid, at = self._slot
        t = self.proc.threads.get(tid)
        if t is None or t.gone:
            return  # its thread is gone: the area stays (the next run removes it)
        self.proc.mem.write(at, self._frame_bytes(t, at))
        self.proc.injector(tid)._call(NR.munmap, (addr, size), "munmap(injection area)", frame=at)
        self.addr = 0
        self._frames.clear()
