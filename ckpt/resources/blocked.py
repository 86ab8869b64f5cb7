"""Blocked calls: how a thread seized inside a system call resumes after restore.

A thread frozen while blocked in a syscall shows ``orig_rax`` = the call and
``rax`` = what the kernel made of the interruption.  Measured on 6.18
(PTRACE_SEIZE + PTRACE_INTERRUPT of threads blocked in each call):

======================================================  ==========================  =======================
call                                                    rax at the stop             resume (this module)
======================================================  ==========================  =======================
read, pause, futex without timeout, wait4, …            -ERESTARTSYS/NOHAND         RESTART
ppoll, pselect6, select (timeout or none)               -ERESTARTNOHAND             RESTART
clock_nanosleep(TIMER_ABSTIME)                          -ERESTARTNOHAND             RESTART
futex_wait (futex2, absolute timeout)                   -ERESTARTSYS                RESTART
poll (any timeout, -1 included)                         -ERESTART_RESTARTBLOCK      REISSUE
nanosleep, clock_nanosleep relative (any clock)         -ERESTART_RESTARTBLOCK      REISSUE
futex FUTEX_WAIT / FUTEX_WAIT_BITSET with a timeout     -ERESTART_RESTARTBLOCK      REISSUE
epoll_wait, epoll_pwait, epoll_pwait2                   -EINTR (returned)           REISSUE
rt_sigtimedwait; recvfrom/recvmsg/accept(4) on a       -EINTR (returned)           REISSUE
socket with SO_RCVTIMEO (without: -ERESTARTSYS)
the same calls restarted after an earlier stop          restart_syscall, -516       REISSUE if the call is
                                                                                    told by its code, else EINTR
any other call returning -516 or -EINTR                                             EINTR, with a warning
======================================================  ==========================  =======================

RESTART is the kernel's own rewind: the restored thread is let go from a stop inside ``get_signal()``
with the frame it was frozen with, so the kernel applies its rules itself (a signal handled before the
thread is back in the call ends it with EINTR where the kernel would); from any other stop, ckpt rewinds
it the same way (:func:`ckpt.control.inject.syscall_restart_frame`).
-ERESTART_RESTARTBLOCK asks the kernel to go on through ``restart_syscall``
with a restart block kept in the task (the deadline, the futex, the poll
set); the restored task has none, so the call is *re-issued* instead:
``rip -= 2`` (back onto the ``syscall`` instruction), ``rax`` = the call and
``orig_rax = -1``, with the arguments still in the saved registers.  Nothing
the program can see is changed (no register but rax/rip, no memory), so a
relative timeout starts again from its *original* value: the remaining time is
in the restart block only — nanosleep's ``*rem`` holds it too, but using it
would mean changing the program's ``*req`` or its ``rdi``.  Absolute deadlines
(FUTEX_WAIT_BITSET, TIMER_ABSTIME) are kept exactly, and
ppoll/pselect6/select resume with the remaining time because the kernel wrote
it back into their timeout argument.

Calls that return -EINTR when the thread is merely frozen (epoll_wait & co,
signal(7): "never restarted … after a stop") are re-issued the same way: the
EINTR is the freeze's, and a call that returned -EINTR has consumed nothing.
A caught signal pending at the freeze is restored as pending and runs its
handler first; the call then starts again — as if the signal had come just
before the call, which a program cannot tell apart.

A thread that was already restarting such a call when seized (a stop or an
earlier dump -R/pre-dump made the kernel rewind it to ``restart_syscall``,
219) no longer shows which call it was.  The arguments are still in its
registers; the call is told from the code before ``rip`` when that is ``mov
$NR, %eax; syscall`` (glibc's inline syscalls), else the thread gets -EINTR
from the call and the dump warns, naming it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence

from ..control.inject import ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, syscall_restart_frame
from ..image.pb import core_pb2
from ..kernel.arch_x86_64 import NR, SYSCALL_INSN, user_regs_struct

__all__ = ["RESTART_BLOCK_CALLS", "EINTR_CALLS", "CODE_BEFORE", "call_in_code", "syscall_state", "resume_frame",
           "dump_notes"]

_U64 = (1 << 64) - 1
_NO_SYSCALL = _U64  # orig_rax = -1: the kernel applies no restart rule to the frame

State = core_pb2.SyscallState

#: Calls that answer an interruption with -ERESTART_RESTARTBLOCK and are re-issued from their saved arguments.
RESTART_BLOCK_CALLS = frozenset({NR.poll, NR.nanosleep, NR.clock_nanosleep, NR.futex})
#: Calls a freeze makes return -EINTR, and that can be issued again (a -EINTR return consumed nothing).
EINTR_CALLS = frozenset({NR.epoll_wait, NR.epoll_pwait, NR.epoll_pwait2, NR.rt_sigtimedwait,
                         NR.recvfrom, NR.recvmsg, NR.accept, NR.accept4})

#: Bytes read before ``rip`` to tell the call a restart_syscall restarts: one byte, ``mov $imm32, %eax``, ``syscall``.
CODE_BEFORE = 8
_MOV_EAX_IMM32 = 0xB8
#: Prefixes that would make ``b8 imm`` another instruction (REX.B: mov to r8d; operand or address size).
_PREFIXES = frozenset(range(0x40, 0x50)) | {0x66, 0x67}


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def call_in_code(code: bytes) -> int | None:
    """The syscall number loaded just before the ``syscall`` that ends ``code``, when it is ``mov $NR, %eax``.

    ``code`` is the :data:`CODE_BEFORE` bytes before a thread's ``rip``.
    Only calls that restart through a restart block count: anything else
    (a number from a register, as glibc's ``syscall()`` passes it, or an
    unexpected value) is None.
    """
    if len(code) != CODE_BEFORE or code[-2:] != SYSCALL_INSN or code[1] != _MOV_EAX_IMM32 or code[0] in _PREFIXES:
        return None
    nr = int.from_bytes(code[2:6], "little")
    return nr if nr in RESTART_BLOCK_CALLS else None


def syscall_state(regs: user_regs_struct, read_code: Callable[[int, int], bytes] | None = None) -> State:
    """What the thread was doing in the kernel, and how restore resumes it (see the table above).

    ``read_code(addr, length)`` reads the target's memory; it is asked only
    for a thread in ``restart_syscall`` (and may raise OSError).
    """
    nr, result = _signed(regs.orig_rax), _signed(regs.rax)
    st = State(nr=nr, result=result, resume=State.AS_IS)
    if nr < 0:
        return st
    if result in (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND):  # the kernel's own rewind
        st.resume = State.RESTART
    elif result == -ERESTART_RESTARTBLOCK:
        call = nr if nr in RESTART_BLOCK_CALLS else None
        if nr == NR.restart_syscall and read_code is not None:
            try:
                call = call_in_code(read_code(regs.rip - CODE_BEFORE, CODE_BEFORE))
            except OSError:
                call = None
        if call is None:
            st.resume = State.EINTR
        else:
            st.resume, st.reissue = State.REISSUE, call
    elif result == -errno.EINTR:
        if nr in EINTR_CALLS:
            st.resume, st.reissue = State.REISSUE, nr
        else:
            st.resume = State.EINTR
    return st


def resume_frame(regs: user_regs_struct, st: State, *, in_get_signal: bool = False) -> user_regs_struct:
    """The registers a restored thread resumes with, as ``st`` (recorded at dump) says; ``regs`` is not modified.

    An image without a recorded state (RESUME_UNSPECIFIED) is judged from the registers alone.
    ``in_get_signal``: the thread leaves from a stop inside ``get_signal()`` (an interrupt, group or
    signal-delivery stop), where the kernel applies its own restart rules to a RESTART frame as it goes
    on: a caught signal that is pending then, or comes before the thread is back in user space, ends the
    call as it would have without the dump (EINTR for pause and sigsuspend, ERESTARTNOHAND; a restart
    under SA_RESTART), where a frame rewound here would run the call again after its handler.
    """
    if st.resume == State.RESUME_UNSPECIFIED:
        st = syscall_state(regs)
    if st.resume == State.RESTART:
        return regs.copy() if in_get_signal else syscall_restart_frame(regs)
    out = regs.copy()
    if st.resume == State.REISSUE and st.reissue in RESTART_BLOCK_CALLS | EINTR_CALLS:
        out.rax = st.reissue & _U64
        out.rip = regs.rip - len(SYSCALL_INSN)
    elif st.resume in (State.EINTR, State.REISSUE):  # REISSUE of a call this ckpt does not know: as EINTR
        out.rax = -errno.EINTR & _U64
    else:
        return out
    out.orig_rax = _NO_SYSCALL
    return out


def _call_name(nr: int) -> str:
    try:
        return NR(nr).name
    except ValueError:
        return f"syscall {nr}"


def dump_notes(pid: int, cores: Sequence[core_pb2.ThreadCore]) -> list[str]:
    """Warnings for the threads whose blocked call cannot be resumed: they get EINTR after restore."""
    notes = []
    for core in cores:
        st = core.syscall
        if st.resume != State.EINTR:
            continue
        who = f"thread {core.tid} ({core.comm}) of process {pid}" if core.tid != pid else f"process {pid} ({core.comm})"
        if st.nr == NR.restart_syscall:
            why = ("was restarting a call after an earlier stop (restart_syscall), and its code does not tell "
                   "which call: that call returns EINTR after restore")
        elif st.result == -ERESTART_RESTARTBLOCK:
            why = (f"is in {_call_name(st.nr)}, which the kernel resumes from state only the old task holds: "
                   "the call returns EINTR after restore")
        else:
            why = f"was in {_call_name(st.nr)}, which returned EINTR when frozen: the restored thread sees that EINTR"
        notes.append(f"{who} {why}")
    return notes
