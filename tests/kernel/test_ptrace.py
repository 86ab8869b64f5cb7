"""ckpt.kernel.ptrace on real targets: stops, registers, regsets, signal masks, rseq, words."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ckpt.kernel import ptrace, vm
from ckpt.kernel.arch_x86_64 import user_regs_struct
from ckpt.kernel.ptrace import StopKind, WaitStatus
from targets import kill_all, spawn, tracer_of, vector_kind, wait_until


@contextmanager
def seized(tid: int, options: int = ptrace.PTRACE_O_TRACESYSGOOD) -> Iterator[WaitStatus]:
    """Seize + interrupt one thread, yield its stop, always detach."""
    ptrace.seize(tid, options)
    try:
        ptrace.interrupt(tid)
        st = ptrace.waitpid(tid)
        yield st
    finally:
        ptrace.detach(tid)


def read_u64(pid: int, addr: int) -> int:
    return int.from_bytes(vm.read_memory(pid, addr, 8), "little")


def test_interrupt_gives_event_stop_and_detach_resumes(c_target) -> None:
    t = c_target("spin")
    info = t.ready()
    counter = int(info["counters"], 16)
    with seized(t.pid) as st:
        assert st.kind is StopKind.EVENT_STOP
        assert st.event == ptrace.PTRACE_EVENT_STOP and st.stopsig == signal.SIGTRAP
        assert tracer_of(t.pid) == os.getpid()
        before = read_u64(t.pid, counter)
        time.sleep(0.02)
        assert read_u64(t.pid, counter) == before, "a stopped thread kept counting"
    assert tracer_of(t.pid) == 0
    wait_until(lambda: read_u64(t.pid, counter) != before, "the thread runs again after PTRACE_DETACH")


def test_regs_round_trip_and_prstatus_regset(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with seized(t.pid):
        regs = ptrace.getregs(t.pid)
        prstatus = ptrace.getregset(t.pid, ptrace.NT_PRSTATUS, 4096)
        assert len(prstatus) == ctypes.sizeof(user_regs_struct)  # the kernel's iov_len, not our 4096
        assert prstatus == bytes(regs)
        changed = regs.copy()
        changed.r12 = 0x1122334455667788
        ptrace.setregs(t.pid, changed)
        assert ptrace.getregs(t.pid).r12 == 0x1122334455667788
        ptrace.setregs(t.pid, regs)
        assert bytes(ptrace.getregs(t.pid)) == bytes(regs)


#: XCR0 bits each vecregs kind needs: x87|SSE; |AVX; |opmask|ZMM_Hi256|Hi16_ZMM.
_XCR0_NEEDED = {"xmm": 0x3, "ymm": 0x7, "zmm": 0xE7}
#: Where the legacy XSAVE area keeps %xmm15 (160 + 15 * 16): fixed by the architecture.
_XMM15_OFFSET = 400


def test_xstate_holds_vector_registers_and_setregset_changes_them(c_target) -> None:
    """On any CPU: the widest vector registers it has (vecregs.h) are in NT_X86_XSTATE, and a changed
    area written back with SETREGSET is what the thread then holds."""
    t = c_target("vecregs")
    kind = t.ready()["vec"]
    assert kind == vector_kind(), "the scenario does not hold the widest registers /proc/cpuinfo lists"
    n = {"xmm": 16, "ymm": 32, "zmm": 128}[kind]
    chunks = [bytes((0x40 + i) & 0xFF for i in range(at, at + 16)) for at in range(0, n, 16)]
    seen: list[bytes] = []

    def loaded() -> bool:  # the registers hold the pattern once the thread is inside its asm spin
        with seized(t.pid):
            seen[:] = [ptrace.get_xstate(t.pid)]
        return all(c in seen[0] for c in chunks)

    wait_until(loaded, f"the {kind} pattern is in the XSAVE area")
    with seized(t.pid):
        size = ptrace.xstate_size(t.pid)
        xstate = ptrace.get_xstate(t.pid)
        assert len(xstate) == size
        xcr0 = int.from_bytes(xstate[464:472], "little")  # the kernel stores XCR0 in the sw-reserved bytes
        assert xcr0 & _XCR0_NEEDED[kind] == _XCR0_NEEDED[kind], f"{kind} state components missing from XCR0 {xcr0:#x}"
        # 2,432 bytes with XCR0 0xe7; 11,008 on a host that adds AMX tiles (XCR0 0x600e7).
        assert xstate.find(chunks[0]) == _XMM15_OFFSET
        ptrace.set_xstate(t.pid, xstate)
        assert ptrace.get_xstate(t.pid) == xstate
        with pytest.raises(OSError) as short:
            ptrace.set_xstate(t.pid, xstate[:size // 2])
        assert short.value.errno == errno.EFAULT
        changed = bytearray(xstate)
        for c in chunks:
            at = changed.find(c)
            changed[at:at + 16] = c[::-1]
        ptrace.set_xstate(t.pid, bytes(changed))
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("VEC=") == "VEC=" + b"".join(c[::-1] for c in chunks).hex()


def _proc_sigblk(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk")


def test_sigmask_get_and_set(c_target) -> None:
    t = c_target("sleeper", "2000")
    t.ready()  # its main thread blocks SIGUSR1
    with seized(t.pid):
        mask = ptrace.getsigmask(t.pid)
        assert mask == _proc_sigblk(t.pid, t.pid)
        assert mask & (1 << (signal.SIGUSR1 - 1))
        ptrace.setsigmask(t.pid, mask | (1 << (signal.SIGUSR2 - 1)))
        assert ptrace.getsigmask(t.pid) == mask | (1 << (signal.SIGUSR2 - 1))
        ptrace.setsigmask(t.pid, mask)
        assert ptrace.getsigmask(t.pid) == mask


def test_rseq_configuration(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with seized(t.pid):
        conf = ptrace.get_rseq_configuration(t.pid)
        fs_base = ptrace.getregs(t.pid).fs_base
    assert conf.signature == 0x53053053  # RSEQ_SIG on x86
    assert conf.rseq_abi_size >= 20
    assert abs(conf.rseq_abi_pointer - fs_base) < 1 << 16, "glibc keeps struct rseq in the TLS block"


def test_peekdata_reads_all_ones_word_and_pokedata(c_target) -> None:
    t = c_target("spin")
    addr = int(t.ready()["pattern"], 16)
    with seized(t.pid):
        original = ptrace.peekdata(t.pid, addr)
        assert original == 0x0101010101010101
        ptrace.pokedata(t.pid, addr, -1)
        assert ptrace.peekdata(t.pid, addr) == 0xFFFFFFFFFFFFFFFF  # -1 is data, not an error
        ptrace.pokedata(t.pid, addr, original)
        with pytest.raises(OSError) as exc:
            ptrace.peekdata(t.pid, 8)
        assert "PTRACE_PEEKDATA" in str(exc.value)
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def test_signal_delivery_stop_siginfo(c_target) -> None:
    t = c_target("spin")
    t.ready()
    ptrace.seize(t.pid, ptrace.PTRACE_O_TRACESYSGOOD)
    try:
        os.kill(t.pid, signal.SIGUSR1)
        st = ptrace.waitpid(t.pid)
        assert st.kind is StopKind.SIGNAL_DELIVERY and st.stopsig == signal.SIGUSR1
        info = ptrace.getsiginfo(t.pid)
        signo, _, code = (int.from_bytes(info[i:i + 4], "little", signed=True) for i in (0, 4, 8))
        assert (signo, code) == (signal.SIGUSR1, 0)  # SI_USER
        assert int.from_bytes(info[16:20], "little") == os.getpid()  # si_pid
        ptrace.cont(t.pid, signal.SIGUSR1)  # deliver it: the handler runs the check
    finally:
        ptrace.interrupt(t.pid)
        while ptrace.waitpid(t.pid).kind is not StopKind.EVENT_STOP:
            ptrace.cont(t.pid)
        ptrace.detach(t.pid)
    t.expect("PASS")


def test_clone_event_message_is_new_tid(c_target) -> None:
    t = c_target("threads", "0")
    t.ready()
    ptrace.seize(t.pid, ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_TRACESYSGOOD)
    new = None
    try:
        st = ptrace.waitpid(t.pid)
        assert st.kind is StopKind.PTRACE_EVENT and st.event == ptrace.PTRACE_EVENT_CLONE
        new = ptrace.geteventmsg(t.pid)
        assert os.path.exists(f"/proc/{t.pid}/task/{new}")
        first = ptrace.waitpid(new)
        assert first.kind is StopKind.EVENT_STOP  # auto-attached threads start in an event-stop
    finally:
        if new is not None:
            ptrace.detach(new)
        ptrace.detach(t.pid)


def test_errors_name_the_request() -> None:
    with pytest.raises(OSError) as exc:
        ptrace.getregs(os.getpid())  # not our tracee
    assert exc.value.errno == errno.ESRCH
    assert f"ptrace(PTRACE_GETREGS, {os.getpid()})" in str(exc.value)
    with pytest.raises(ChildProcessError) as wexc:
        ptrace.waitpid(os.getpid(), os.WNOHANG)
    assert "waitpid" in str(wexc.value)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ((ptrace.PTRACE_EVENT_STOP << 16) | (signal.SIGTRAP << 8) | 0x7F, StopKind.EVENT_STOP),
        ((ptrace.PTRACE_EVENT_STOP << 16) | (signal.SIGSTOP << 8) | 0x7F, StopKind.GROUP_STOP),
        ((ptrace.PTRACE_EVENT_CLONE << 16) | (signal.SIGTRAP << 8) | 0x7F, StopKind.PTRACE_EVENT),
        (((signal.SIGTRAP | 0x80) << 8) | 0x7F, StopKind.SYSCALL),
        ((signal.SIGUSR1 << 8) | 0x7F, StopKind.SIGNAL_DELIVERY),
        (3 << 8, StopKind.EXITED),
        (signal.SIGKILL, StopKind.KILLED),
    ],
)
def test_wait_status_kinds(status: int, kind: StopKind) -> None:
    st = WaitStatus(123, status)
    assert st.kind is kind
    assert str(st).startswith("123 ")


_FORKER = """
import os, signal, sys
sys.stdin.readline()
child = os.fork()
if child == 0:
    while True:
        signal.pause()
print(child, flush=True)
_, status = os.waitpid(child, 0)
print("killed by", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None, flush=True)
"""

_TRACER = """
import signal, sys
from ckpt.kernel import ptrace
pid = int(sys.argv[1])
ptrace.seize(pid, ptrace.PTRACE_O_TRACEFORK | ptrace.PTRACE_O_EXITKILL)
print("seized", flush=True)
while (st := ptrace.waitpid(pid)).event != ptrace.PTRACE_EVENT_FORK:
    ptrace.cont(pid, st.stopsig if st.kind is ptrace.StopKind.SIGNAL_DELIVERY else 0)
child = ptrace.geteventmsg(pid)
ptrace.waitpid(child)  # its first stop
ptrace.detach(pid)  # only the child stays traced
print("child", child, flush=True)
signal.pause()
"""


def test_exitkill_reaches_a_child_auto_attached_by_tracefork() -> None:
    """A restore's helpers are cloned from a traced helper (PTRACE_O_TRACEFORK) and must inherit
    PTRACE_O_EXITKILL: when the restorer dies, they die, rather than run on detached."""
    forker = spawn([sys.executable, "-c", _FORKER], stdin_pipe=True)
    tracer = spawn([sys.executable, "-c", _TRACER, str(forker.pid)])
    child = 0
    try:
        assert tracer.readline() == "seized"
        forker.write(b"fork\n")
        child = int(tracer.readline().split()[1])
        assert forker.readline() == str(child)
        assert tracer_of(child) == tracer.pid and tracer_of(forker.pid) == 0
        tracer.close()  # SIGKILL: the tracer dies without detaching
        assert forker.readline() == f"killed by {signal.SIGKILL.value}"
    finally:
        forker.close()
        tracer.close()
        if child:
            kill_all([child])
