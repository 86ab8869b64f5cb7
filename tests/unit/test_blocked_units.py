"""ckpt.resources.blocked: how a thread frozen in a syscall is recorded and resumed (frames only; the real
calls are in tests/e2e/test_blocked_calls.py)."""

from __future__ import annotations

import errno

import pytest

from ckpt.control.inject import ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTSYS
from ckpt.image.pb import core_pb2
from ckpt.kernel.arch_x86_64 import NR, user_regs_struct
from ckpt.resources.blocked import call_in_code, dump_notes, resume_frame, syscall_state

State = core_pb2.SyscallState
U64 = (1 << 64) - 1
RIP = 0x7F0000001002


def frame(orig_rax: int, rax: int) -> user_regs_struct:
    r = user_regs_struct()
    r.orig_rax, r.rax, r.rip, r.rdi, r.rsi, r.rdx, r.r10 = orig_rax & U64, rax & U64, RIP, 0x1000, 1, 5000, 0
    return r


def signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# --- telling the call restart_syscall restarts --------------------------------------------------------------

GLIBC_POLL = bytes.fromhex("08 b8 07 00 00 00 0f 05")  # ... mov 0x8(%rsp),%rdi; mov $7,%eax; syscall


def test_call_in_code_reads_mov_eax_before_syscall() -> None:
    assert call_in_code(GLIBC_POLL) == NR.poll
    assert call_in_code(bytes.fromhex("14 b8 e6 00 00 00 0f 05")) == NR.clock_nanosleep
    assert call_in_code(bytes.fromhex("00 b8 ca 00 00 00 0f 05")) == NR.futex


@pytest.mark.parametrize("code", [
    "41 b8 07 00 00 00 0f 05",  # mov $7,%r8d: eax comes from elsewhere
    "66 b8 07 00 00 00 0f 05",  # an operand-size prefix makes it another instruction
    "4c 8b 4c 24 08 00 0f 05",  # glibc's syscall(): the number came in a register
    "00 b8 00 00 00 00 0f 05",  # read: never restarted through a restart block
    "00 b8 07 00 00 00 90 90",  # no syscall instruction at rip - 2
    "b8 07 00 00 00 0f 05",     # too short
])
def test_call_in_code_refuses_anything_else(code: str) -> None:
    assert call_in_code(bytes.fromhex(code)) is None


# --- what the dump records ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("orig", "rax", "resume", "reissue"), [
    (-1, 0, State.AS_IS, None),                                        # in user code
    (NR.read, 5, State.AS_IS, None),                                   # caught at syscall exit with its result
    (NR.read, -errno.EAGAIN, State.AS_IS, None),
    (NR.read, -ERESTARTSYS, State.RESTART, None),
    (NR.ppoll, -ERESTARTNOHAND, State.RESTART, None),
    (NR.poll, -ERESTART_RESTARTBLOCK, State.REISSUE, NR.poll),
    (NR.nanosleep, -ERESTART_RESTARTBLOCK, State.REISSUE, NR.nanosleep),
    (NR.clock_nanosleep, -ERESTART_RESTARTBLOCK, State.REISSUE, NR.clock_nanosleep),
    (NR.futex, -ERESTART_RESTARTBLOCK, State.REISSUE, NR.futex),
    (999, -ERESTART_RESTARTBLOCK, State.EINTR, None),                  # a call this ckpt does not know
    (NR.epoll_wait, -errno.EINTR, State.REISSUE, NR.epoll_wait),       # the freeze's EINTR
    (NR.epoll_pwait2, -errno.EINTR, State.REISSUE, NR.epoll_pwait2),
    (NR.connect, -errno.EINTR, State.EINTR, None),                     # not safe to issue again
])
def test_syscall_state(orig: int, rax: int, resume: int, reissue: int | None) -> None:
    st = syscall_state(frame(orig, rax))
    assert (st.nr, st.result, st.resume) == (orig, rax, resume)
    assert (st.reissue if st.HasField("reissue") else None) == reissue


def test_restart_syscall_is_told_by_the_code_before_rip() -> None:
    asked = []

    def read_code(addr: int, n: int) -> bytes:
        asked.append((addr, n))
        return GLIBC_POLL

    st = syscall_state(frame(NR.restart_syscall, -ERESTART_RESTARTBLOCK), read_code)
    assert (st.resume, st.reissue) == (State.REISSUE, NR.poll) and asked == [(RIP - 8, 8)]


def test_restart_syscall_that_cannot_be_told_returns_eintr() -> None:
    def unreadable(addr: int, n: int) -> bytes:
        raise OSError(errno.EIO, "short read")

    regs = frame(NR.restart_syscall, -ERESTART_RESTARTBLOCK)
    assert syscall_state(regs).resume == State.EINTR  # nothing to read with
    assert syscall_state(regs, unreadable).resume == State.EINTR
    assert syscall_state(regs, lambda a, n: bytes(8)).resume == State.EINTR


def test_code_is_read_only_for_restart_syscall() -> None:
    def never(addr: int, n: int) -> bytes:
        raise AssertionError("read")

    for orig, rax in ((NR.poll, -ERESTART_RESTARTBLOCK), (NR.read, -ERESTARTSYS), (-1, 0)):
        syscall_state(frame(orig, rax), never)


# --- the frame restore sets ---------------------------------------------------------------------------------

def test_reissue_frame_runs_the_call_again_with_its_arguments() -> None:
    regs = frame(NR.restart_syscall, -ERESTART_RESTARTBLOCK)
    out = resume_frame(regs, State(nr=NR.restart_syscall, result=-ERESTART_RESTARTBLOCK, resume=State.REISSUE,
                                   reissue=NR.poll))
    assert (out.rax, out.rip, out.orig_rax) == (NR.poll, RIP - 2, U64)
    assert (out.rdi, out.rsi, out.rdx, out.r10) == (regs.rdi, regs.rsi, regs.rdx, regs.r10)
    assert signed(regs.rax) == -ERESTART_RESTARTBLOCK, "the input frame must not change"


def test_eintr_frame_returns_from_the_call() -> None:
    out = resume_frame(frame(999, -ERESTART_RESTARTBLOCK), State(nr=999, result=-516, resume=State.EINTR))
    assert (signed(out.rax), out.rip, out.orig_rax) == (-errno.EINTR, RIP, U64)


def test_restart_frame_is_the_kernels_rewind() -> None:
    out = resume_frame(frame(NR.read, -ERESTARTSYS), State(nr=NR.read, result=-512, resume=State.RESTART))
    assert (out.rax, out.rip, out.orig_rax) == (NR.read, RIP - 2, U64)


def test_as_is_frame_is_left_alone() -> None:
    regs = frame(NR.read, 5)
    assert bytes(resume_frame(regs, State(nr=NR.read, result=5, resume=State.AS_IS))) == bytes(regs)


def test_the_record_decides_not_the_registers() -> None:
    """An image of an earlier ckpt recorded EINTR for a nanosleep: it keeps that; one with no record at all
    is judged from its registers."""
    regs = frame(NR.nanosleep, -ERESTART_RESTARTBLOCK)
    old = resume_frame(regs, State(nr=NR.nanosleep, result=-516, resume=State.EINTR))
    assert signed(old.rax) == -errno.EINTR
    assert resume_frame(regs, State()).rax == NR.nanosleep


def test_reissue_of_an_unknown_call_is_not_run() -> None:
    out = resume_frame(frame(NR.poll, -ERESTART_RESTARTBLOCK), State(resume=State.REISSUE, reissue=NR.execve))
    assert (signed(out.rax), out.rip) == (-errno.EINTR, RIP)


# --- warnings -----------------------------------------------------------------------------------------------

def test_dump_notes_name_the_thread_and_the_call() -> None:
    def core(tid: int, orig: int, rax: int) -> core_pb2.ThreadCore:
        return core_pb2.ThreadCore(tid=tid, comm="worker", syscall=syscall_state(frame(orig, rax)))

    notes = dump_notes(100, [core(100, NR.poll, -ERESTART_RESTARTBLOCK), core(101, 999, -ERESTART_RESTARTBLOCK),
                             core(102, NR.restart_syscall, -ERESTART_RESTARTBLOCK), core(103, NR.connect, -4),
                             core(104, NR.read, -ERESTARTSYS)])
    assert len(notes) == 3
    assert notes[0].startswith("thread 101 (worker) of process 100 is in syscall 999") and "EINTR" in notes[0]
    assert notes[1].startswith("thread 102 (worker) of process 100 was restarting") and "restart_syscall" in notes[1]
    assert notes[2].startswith("thread 103 (worker) of process 100 was in connect")
