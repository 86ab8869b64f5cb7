"""Threads: registers, xstate, signal mask and the per-thread kernel registrations.

Dump: per frozen thread, the registers saved when it was seized, the XSAVE
area (its size depends on XCR0: 11,008 bytes with AMX here), the blocked mask,
the rseq registration (PTRACE_GET_RSEQ_CONFIGURATION), the robust futex list
(get_robust_list works from outside), and — by syscalls injected into that
very thread, because only the thread can ask — its clear-child-tid address
(PR_GET_TID_ADDRESS), sigaltstack and timer slack.

Restore (DESIGN §4): every thread but the leader is recreated by ``clone3``
injected into the main thread with ``set_tid = [tid]``.  The helper is traced
with PTRACE_O_TRACECLONE, so the new thread is attached before it runs and
stops at once: without that it would run into the trampoline's ``int3`` and the
whole process would die of SIGTRAP.  Each thread then registers its rseq area,
robust list, tid address, timer slack and sigaltstack itself; last, the final
frame, xstate and mask are set and every thread is PTRACE_DETACHed explicitly.

A thread seized inside a blocking syscall: the new task has no kernel restart
state (and the helper's restart block is not the target's), so the frame is
rewritten as :mod:`.blocked` decided at dump — the call runs again, or, where it
cannot, returns -EINTR.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence

from ..control.inject import ALL_SIGNALS, OUT, Injector, Query, Scratch
from ..control.seize import FrozenProcess, FrozenThread, ThreadSnapshot, _requeue
from ..errors import RestoreError, Unsupported
from ..image.pb import core_pb2
from ..kernel import clone, ptrace
from ..kernel.arch_x86_64 import NR, user_regs_struct
from ..kernel.libc import syscall
from ..kernel.prctl import PR_GET_TID_ADDRESS, PR_GET_TIMERSLACK, PR_SET_NAME, PR_SET_TIMERSLACK
from ..kernel.task_abi import SS_DISABLE, SS_ONSTACK, stack_t
from ..kernel.ptrace import StopKind
from ..procfs.snapshot import Snapshot
from ..testpoint import point
from . import blocked, limits, signals

__all__ = [
    "THREAD_CLONE_FLAGS", "regs_to_pb", "regs_from_pb", "dump_thread", "dump_threads",
    "fit_xstate", "check_xstate", "create_threads", "restore_thread_state", "restore_pending", "final_frame", "finish_thread", "detach_thread",
]

#: How a thread of the restored process is created (what pthread_create asks for, plus SETTID/CLEARTID).
THREAD_CLONE_FLAGS = (clone.CLONE_VM | clone.CLONE_FS | clone.CLONE_FILES | clone.CLONE_SIGHAND
                      | clone.CLONE_THREAD | clone.CLONE_SYSVSEM | clone.CLONE_SETTLS)


def regs_to_pb(regs: user_regs_struct) -> core_pb2.UserRegsX86_64:
    return core_pb2.UserRegsX86_64(**regs.as_dict())


def regs_from_pb(pb: core_pb2.UserRegsX86_64) -> user_regs_struct:
    return user_regs_struct.from_dict({name: getattr(pb, name) for name, _ in user_regs_struct._fields_})


def _robust_list(tid: int) -> tuple[int, int]:
    head, length = ctypes.c_uint64(), ctypes.c_size_t()
    syscall(NR.get_robust_list, tid, ctypes.addressof(head), ctypes.addressof(length),
            name=f"get_robust_list({tid})")
    return head.value, length.value


def _comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
            return os.fsdecode(f.read().rstrip(b"\n"))
    except OSError:
        return ""


TID_ADDRESS = Query("prctl(PR_GET_TID_ADDRESS)", NR.prctl, (PR_GET_TID_ADDRESS, OUT, 0, 0, 0), out=8)
SIGALTSTACK = Query("sigaltstack(0, &old)", NR.sigaltstack, (0, OUT), out=ctypes.sizeof(stack_t))
TIMERSLACK = Query("prctl(PR_GET_TIMERSLACK)", NR.prctl, (PR_GET_TIMERSLACK, 0, 0, 0, 0))


def queries(proc: FrozenProcess) -> dict[int, tuple[Query, ...]]:
    """What :func:`dump_thread` asks each thread, by tid (a dump may ask them of a whole tree at once:
    inject.ask_all); the leader's timer slack is read from /proc instead."""
    return {tid: (TID_ADDRESS, SIGALTSTACK) if tid == proc.pid else (TID_ADDRESS, SIGALTSTACK, TIMERSLACK)
            for tid in proc.threads}


def dump_thread(t: FrozenThread, inj: Injector, scratch: Scratch) -> core_pb2.ThreadCore:
    """The ThreadCore of one frozen thread; ``inj`` injects into that thread, ``scratch`` is mapped in the target."""
    tid = t.tid
    regs = t.snapshot.regs
    core = core_pb2.ThreadCore(tid=tid, comm=_comm(t.pid, tid), regs=regs_to_pb(regs),
                               xstate=ptrace.get_xstate(tid), sigmask=t.snapshot.sigmask,
                               syscall=blocked.syscall_state(regs, read_code=lambda a, n: t.process.mem.read(a, n)))
    rseq = ptrace.get_rseq_configuration(tid)
    if rseq.rseq_abi_pointer:
        core.rseq.CopyFrom(core_pb2.Rseq(abi_pointer=rseq.rseq_abi_pointer, size=rseq.rseq_abi_size,
                                         signature=rseq.signature, flags=rseq.flags))
    head, length = _robust_list(tid)
    core.robust_list.CopyFrom(core_pb2.RobustList(head=head, len=length))
    core.clear_child_tid = struct.unpack("<Q", inj.ask(TID_ADDRESS, scratch)[1])[0]
    ss = stack_t.from_buffer_copy(inj.ask(SIGALTSTACK, scratch)[1])
    core.sigaltstack.CopyFrom(core_pb2.SigAltStack(sp=ss.ss_sp, flags=ss.ss_flags, size=ss.ss_size))
    core.timer_slack_ns = _timer_slack(t.pid, tid, inj)
    return core


def _timer_slack(pid: int, tid: int, inj: Injector) -> int:
    """The leader's from /proc/PID/timerslack_ns (no ptrace round trip); other threads' have no file: injected."""
    if tid == pid:
        try:
            with open(f"/proc/{pid}/timerslack_ns", "rb") as f:
                return int(f.read())
        except (OSError, ValueError):
            pass
    return inj.ask(TIMERSLACK)[0]


def dump_threads(proc: FrozenProcess, scratch: Scratch, snap: Snapshot | None = None) -> list[core_pb2.ThreadCore]:
    """Every live thread, the leader first; Unsupported for an exited leader (zombie) of a live group.

    With ``snap``, each ThreadCore also gets its scheduling state
    (:mod:`.limits`); its pending signals are read later, after the last
    injected syscall (:func:`.signals.dump_pending`).
    """
    if proc.zombies:
        raise Unsupported(f"process {proc.pid} has exited threads still listed ({sorted(proc.zombies)}): "
                          "an exited group leader cannot be recreated")
    order = sorted(proc.threads, key=lambda tid: (tid != proc.pid, tid))
    cores = [dump_thread(proc.threads[tid], proc.injector(tid), scratch) for tid in order]
    if snap is not None:
        for core in cores:
            core.sched.CopyFrom(limits.dump_sched(core.tid))
    return cores


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------


#: The XSAVE area as PTRACE_GETREGSET gives it (standard format): the legacy FXSAVE region, Linux's
#: copy of XCR0 in its software-reserved bytes, the header's XSTATE_BV, the AVX upper halves (at the
#: same place on every CPU), and PKRU's default value (Linux gives every process PKRU_AD for keys 1-15).
_XSAVE_SW, _XCR0_AT, _XSTATE_BV_AT, _AVX_AT, _AVX_SIZE = 464, 464, 512, 576, 256
_PKRU_BIT, _PKRU_DEFAULT = 9, 0x55555554
#: XSAVE components a restore carries over between CPUs that enable different ones: x87, SSE, AVX.
_PORTABLE = 0b111
_XNAMES = {3: "MPX bound registers", 4: "MPX bound config", 5: "AVX-512 opmask", 6: "AVX-512 ZMM_Hi256",
           7: "AVX-512 Hi16_ZMM", 9: "PKRU", 17: "AMX tile config", 18: "AMX tile data"}


def fit_xstate(image: bytes, here: bytes) -> bytes:
    """An XSAVE area of another CPU (``image``) in this CPU's layout (``here``: a thread's own area).

    Only x87, SSE and AVX state travel: their places are the same on every
    CPU.  Every other component keeps ``here``'s value (a new thread's: its
    initial state), so in the image it must be in its initial state too
    (XSTATE_BV bit clear, or all zero bytes) — or be PKRU at Linux's default
    (the process never changed its protection keys) — else Unsupported: the
    process's state cannot exist here.
    """
    if image == here or len(image) < _AVX_AT or len(here) < _AVX_AT:
        return image
    (xcr0_img,), (xcr0_here,) = struct.unpack_from("<Q", image, _XCR0_AT), struct.unpack_from("<Q", here, _XCR0_AT)
    if xcr0_img == xcr0_here and len(image) == len(here):
        return image  # the same layout
    (bv_img,), (bv_here,) = struct.unpack_from("<Q", image, _XSTATE_BV_AT), struct.unpack_from("<Q", here, _XSTATE_BV_AT)
    tail = len(image)
    if xcr0_img >> _PKRU_BIT == 1 and bv_img >> _PKRU_BIT & 1 and len(image) >= _AVX_AT + _AVX_SIZE + 8:
        (pkru,) = struct.unpack_from("<I", image, len(image) - 8)  # the last component, being the highest
        if pkru != _PKRU_DEFAULT:
            raise Unsupported(f"the process changed its memory protection keys (PKRU {pkru:#x}), which this CPU's "
                              f"XSAVE layout (XCR0 {xcr0_here:#x}, the image's {xcr0_img:#x}) cannot take")
        tail -= 8
    # Every other component the image's XSTATE_BV marks must hold its initial value (all zero for MPX,
    # AVX-512, AMX): its place in the image's layout is not known here, but it lies after AVX.
    rest = bv_img & ~(_PORTABLE | 1 << _PKRU_BIT)
    if rest and any(image[_AVX_AT + _AVX_SIZE:tail]):
        bit = (rest & -rest).bit_length() - 1
        raise Unsupported(f"the process has {_XNAMES.get(bit, f'XSAVE component {bit}')} state in use, which this "
                          f"CPU's XSAVE layout (XCR0 {xcr0_here:#x}, the image's {xcr0_img:#x}) cannot take")
    out = bytearray(here)
    out[:_XSAVE_SW] = image[:_XSAVE_SW]
    shared = xcr0_img & xcr0_here & _PORTABLE
    struct.pack_into("<Q", out, _XSTATE_BV_AT, (bv_here & ~shared) | (bv_img & shared))
    if shared & 0b100 and len(image) >= _AVX_AT + _AVX_SIZE and len(out) >= _AVX_AT + _AVX_SIZE:
        out[_AVX_AT:_AVX_AT + _AVX_SIZE] = image[_AVX_AT:_AVX_AT + _AVX_SIZE]
    return bytes(out)


def check_xstate(tid: int, cores: Sequence[core_pb2.ThreadCore]) -> None:
    """Give every core's XSAVE area this CPU's layout (:func:`fit_xstate`, in place: SETREGSET needs exactly
    this CPU's), taking the layout from the helper thread ``tid``; Unsupported if one cannot be fitted."""
    here = b""
    for c in cores:
        if not here:
            here = ptrace.get_xstate(tid)
            if all(len(c.xstate) == len(here) for c in cores):
                return
        try:
            c.xstate = fit_xstate(bytes(c.xstate), here)
        except Unsupported as exc:
            raise Unsupported(f"thread {c.tid}: {exc}") from exc


def create_threads(proc: FrozenProcess, inj: Injector, scratch: Scratch, cores: Sequence[core_pb2.ThreadCore],
                   trampoline: int) -> dict[int, Injector]:
    """clone3 every non-leader thread from the main thread with its old tid; their injectors by tid.

    The new thread starts right after the trampoline's ``syscall`` with the
    main thread's registers (``stack = 0``), ``fs_base = tls``, no rseq, and is
    held in its first ptrace stop (PTRACE_O_TRACECLONE) until its final frame is set.
    """
    out: dict[int, Injector] = {proc.pid: inj}
    for core in cores:
        if core.tid == proc.pid:
            continue
        flags = THREAD_CLONE_FLAGS
        if core.clear_child_tid:
            flags |= clone.CLONE_PARENT_SETTID | clone.CLONE_CHILD_CLEARTID
        blob = clone.clone_args_bytes(flags, child_tid=core.clear_child_tid, parent_tid=core.clear_child_tid,
                                      tls=core.regs.fs_base, set_tid=[core.tid], at=scratch.addr)
        scratch.write(0, blob)
        try:
            tid = inj.call(NR.clone3, scratch.addr, clone.CLONE_ARGS_SIZE_VER2)
        except OSError as exc:
            raise RestoreError(f"clone3 of thread {core.tid} failed: {os.strerror(exc.errno or 0)}"
                               + (" (the tid is taken)" if exc.errno == 17 else "")) from exc
        point("restore-thread-cloned")
        if tid != core.tid:
            raise RestoreError(f"clone3 gave thread {tid}, wanted {core.tid}")
        st = ptrace.waitpid(tid)
        if st is None or st.kind is not StopKind.EVENT_STOP:
            raise RestoreError(f"new thread {tid} did not stop as expected: {st}")
        regs = ptrace.getregs(tid)
        thread = FrozenThread(proc, ThreadSnapshot(tid, bytes(regs), ptrace.getsigmask(tid), st), st)
        thread.inherit_pin(inj.thread)
        proc.threads[tid] = thread
        out[tid] = Injector(thread, syscall_insn=trampoline)
    return out


def restore_thread_state(inj: Injector, scratch: Scratch, core: core_pb2.ThreadCore) -> list[str]:
    """rseq, robust list, clear-child-tid, timer slack, name, sigaltstack and scheduling, set by the thread itself.

    Every signal is blocked from here on (the image's mask is set by
    :func:`finish_thread`, with PTRACE_SETSIGMASK, no syscall): the pending
    signals queued later stay in the kernel's queues with their siginfo,
    instead of being dequeued by the next injected syscall and sent again
    from outside, where the kernel forbids forging most siginfo.  Returns
    warnings (a nice value or CPU the kernel refused).
    """
    ptrace.setsigmask(inj.tid, ALL_SIGNALS)
    if core.HasField("rseq") and core.rseq.abi_pointer:
        inj.call(NR.rseq, core.rseq.abi_pointer, core.rseq.size, 0, core.rseq.signature)
    if core.robust_list.head:
        inj.call(NR.set_robust_list, core.robust_list.head, core.robust_list.len)
    inj.call(NR.set_tid_address, core.clear_child_tid)
    if core.timer_slack_ns:
        inj.call(NR.prctl, PR_SET_TIMERSLACK, core.timer_slack_ns, 0, 0, 0)
    if core.comm:  # its own name (pthread_setname_np): a new thread has its creator's
        scratch.write(0, core.comm.encode(errors="surrogateescape")[:15] + b"\0")
        inj.call(NR.prctl, PR_SET_NAME, scratch.addr, 0, 0, 0, name=f"prctl(PR_SET_NAME, {core.comm!r})")
    # Always set, disabled included: the helper inherited the restorer's own alternate stack (pytest's
    # faulthandler has one), and a handler with SA_ONSTACK (CPython sets it) would run on unmapped memory.
    ss = core.sigaltstack
    flags = ss.flags & ~SS_ONSTACK  # SS_ONSTACK is reported, never set
    enabled = (ss.sp or ss.size) and not flags & SS_DISABLE
    want = stack_t(ss_sp=ss.sp, ss_flags=flags, ss_size=ss.size) if enabled else stack_t(ss_flags=SS_DISABLE)
    scratch.write(0, bytes(want))
    inj.call(NR.sigaltstack, scratch.addr, 0)
    return limits.restore_sched(inj, core.sched, scratch=scratch) if core.HasField("sched") else []


def restore_pending(inj: Injector, scratch: Scratch, core: core_pb2.ThreadCore) -> None:
    """Queue the signals pending for this thread only, from the thread itself (the kernel keeps the siginfo)."""
    signals.restore_pending(inj, core.pending, thread=True, scratch=scratch)


#: Stops reported from inside get_signal(): a thread let go from one goes through the kernel's restart rules.
_IN_GET_SIGNAL = frozenset({StopKind.EVENT_STOP, StopKind.GROUP_STOP, StopKind.SIGNAL_DELIVERY})


def final_frame(core: core_pb2.ThreadCore, last_stop: StopKind | None = None) -> user_regs_struct:
    """The registers the thread resumes with: the saved ones, with a blocked call resumed (:mod:`.blocked`)
    from ``last_stop``, the stop it is let go from."""
    return blocked.resume_frame(regs_from_pb(core.regs), core.syscall, in_get_signal=last_stop in _IN_GET_SIGNAL)


def finish_thread(thread: FrozenThread, core: core_pb2.ThreadCore, *, detach: bool = True) -> None:
    """Own CPU mask, final frame, xstate, signal mask; then PTRACE_DETACH (which also clears a single-step trap flag).

    A signal the thread dequeued during an injected syscall (a restored pending
    signal it does not block) was held back by the injector: it is queued again
    now, so the handler runs on the restored frame, not on an injected one.
    ``detach=False``: the thread stays ours, stopped (a group stop is made first,
    :mod:`.jobstop`); :func:`detach_thread` lets it go.
    """
    tid = thread.tid
    thread.unpin()
    ptrace.setregs(tid, final_frame(core, thread.last_stop.kind))
    ptrace.set_xstate(tid, bytes(core.xstate))
    ptrace.setsigmask(tid, core.sigmask)
    for sig in thread.deferred:
        _requeue(thread.pid, tid, sig)
    thread.deferred.clear()
    if detach:
        detach_thread(thread)


def detach_thread(thread: FrozenThread) -> None:
    """PTRACE_DETACH a finished thread (:func:`finish_thread`)."""
    ptrace.detach(thread.tid, 0)
    thread.gone = True  # no longer ours: release() must not touch it
