"""Syscall injection into real targets, and putting interrupted syscalls back correctly."""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from ckpt.control.inject import (
    ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, OUT, Query, ask_all, find_syscall_insn,
    syscall_restart_frame,
)
from ckpt.control.seize import freeze
from ckpt.kernel.prctl import PR_GET_TID_ADDRESS
from ckpt.kernel import ptrace
from ckpt.kernel.arch_x86_64 import NR, PAGE_SIZE, user_regs_struct
from ckpt.kernel.mman import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
from ckpt.kernel.libc import syscall
from ckpt.kernel.ptrace import StopKind
from ckpt.kernel.vm import ProcMem
from targets import tracer_of, wait_in_syscall

U64 = (1 << 64) - 1


def signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def mapped(pid: int, addr: int) -> bool:
    """``addr`` lies in some VMA (a new mapping may merge with its neighbour)."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if start <= addr < end:
                return True
    return False


def inject_basics(pid: int, tid: int | None = None) -> None:
    with freeze(pid) as proc:
        inj = proc.injector(tid)
        assert inj.getpid() == pid
        assert inj.gettid() == inj.tid
        addr = inj.mmap(0, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        assert mapped(pid, addr)
        inj.munmap(addr, 3 * PAGE_SIZE)
        assert not mapped(pid, addr)
    assert tracer_of(pid) == 0


def test_inject_into_running_c_target(c_target) -> None:
    t = c_target("spin", "3")
    t.ready()
    inject_basics(t.pid)
    with freeze(t.pid) as proc:
        assert len(proc.threads) == 3
        for tid in proc.threads:
            assert proc.injector(tid).gettid() == tid
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def test_inject_into_python_target(py_target) -> None:
    t = py_target("py_target.py", "spin")
    t.ready()
    inject_basics(t.pid)
    assert t.alive()


def test_scratch_area(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with freeze(t.pid) as proc:
        inj = proc.injector()
        with inj.scratch(100) as s:  # a target's: lent from its injection area, no call
            assert s.size >= PAGE_SIZE and mapped(t.pid, s.addr)
            s.write(10, b"scratch!")
            assert s.read(10, 8) == b"scratch!"
            with pytest.raises(ValueError):
                s.write(s.size - 2, b"xyz")
        with inj.scratch(64 * PAGE_SIZE) as big:  # too big for it: mapped for the block
            assert big.size == 64 * PAGE_SIZE and mapped(t.pid, big.addr)
        assert not mapped(t.pid, big.addr)
    assert not mapped(t.pid, s.addr)  # the area goes with the release


def test_queries_asked_of_several_processes_at_once(c_target) -> None:
    """ask_all: every thread of two processes gets its own answers, errors are kept as answers, and the
    targets run on as before (forks with their scratch pages at one address: tests/e2e/test_tree.py)."""
    gettid = Query("gettid", NR.gettid, ())
    tid_address = Query("prctl(PR_GET_TID_ADDRESS)", NR.prctl, (PR_GET_TID_ADDRESS, OUT, 0, 0, 0), out=8)
    bad = Query("prctl(-1)", NR.prctl, (U64, 0, 0, 0, 0))
    targets = [c_target("spin", "3"), c_target("spin")]
    for t in targets:
        t.ready()
    with freeze(targets[0].pid) as a, freeze(targets[1].pid) as b, \
            a.injector().scratch(PAGE_SIZE) as sa, b.injector().scratch(PAGE_SIZE) as sb:
        lanes = [(p.injector(tid), s, (gettid, tid_address, bad)) for p, s in ((a, sa), (b, sb)) for tid in p.threads]
        ask_all(lanes)
        for inj, s, _ in lanes:
            assert inj.ask(gettid)[0] == inj.tid
            want = inj.call(NR.prctl, PR_GET_TID_ADDRESS, s.addr + 1024, 0, 0, 0)  # asked now, one by one
            assert want == 0 and inj.ask(tid_address)[1] == s.read(1024, 8)
            with pytest.raises(OSError) as exc:
                inj.ask(bad)
            assert exc.value.errno == errno.EINVAL
            assert inj.ask(gettid)[0] == inj.tid  # an answer is taken once: asked again, it is injected
    for t in targets:
        os.kill(t.pid, signal.SIGUSR1)
        t.expect("PASS")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a pin from the mask")
@pytest.mark.parametrize("helper", [False, True], ids=["target", "restore-helper"])
def test_cpu_masks_while_injecting(c_target, helper: bool) -> None:
    """A target's threads keep their masks untouched; a restore helper's are held on the controller's CPU
    while injected into and get their own back on release.  The controller is never left pinned."""
    t = c_target("spin", "2")
    t.ready()
    ours = os.sched_getaffinity(0)
    tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    os.sched_setaffinity(tids[1], {max(ours)})  # a thread with a mask of its own
    before = {tid: os.sched_getaffinity(tid) for tid in tids}
    with freeze(t.pid) as proc:
        proc.pin_cpus = helper
        for tid in tids:
            assert proc.injector(tid).gettid() == tid
            assert len(os.sched_getaffinity(tid)) == 1 if helper else os.sched_getaffinity(tid) == before[tid]
            assert proc.threads[tid].affinity == before[tid]  # its own mask, pinned or not
            assert os.sched_getaffinity(0) == ours
    assert {tid: os.sched_getaffinity(tid) for tid in tids} == before
    assert tracer_of(t.pid) == 0


def test_injected_error_names_the_call(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with freeze(t.pid) as proc:
        with pytest.raises(OSError) as exc:
            proc.injector().munmap(1, PAGE_SIZE)  # unaligned
        assert exc.value.errno == errno.EINVAL
        assert f"injected munmap(1, 4096) in {t.pid}/{t.pid}" in str(exc.value)
        assert proc.injector().getpid() == t.pid  # the thread is still usable


@pytest.mark.parametrize("where", ["main", "thread"])
def test_blocked_read_in_c_completes_after_injection(c_target, where: str) -> None:
    message = "the-exact-bytes-0123456789"
    t = c_target("blocked_read", where, message, stdin_pipe=True)
    reader = int(t.ready()["reader"])
    wait_in_syscall(t.pid, reader, NR.read)
    with freeze(t.pid) as proc:
        regs = proc.thread(reader).snapshot.regs
        assert (regs.orig_rax, signed(regs.rax)) == (NR.read, -ERESTARTSYS)
        inject_calls(proc.injector(reader))
    t.write(message.encode())
    t.expect("PASS")


@pytest.mark.parametrize("mode", ["read", "stdin"])
def test_blocked_read_in_python_completes_after_injection(py_target, mode: str) -> None:
    message = "python-reads-this"
    t = py_target("py_target.py", mode, str(len(message)), message, stdin_pipe=True)
    t.ready()
    wait_in_syscall(t.pid, t.pid, NR.read)
    with freeze(t.pid) as proc:
        assert signed(proc.main_thread.snapshot.regs.rax) == -ERESTARTSYS
        inject_calls(proc.injector())
    t.write(message[:5].encode())
    time.sleep(0.02)
    t.write(message[5:].encode())
    t.expect("PASS")


def inject_calls(inj) -> None:
    assert inj.getpid() == inj.pid
    addr = inj.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    inj.munmap(addr, PAGE_SIZE)


def test_sleepers_keep_their_time_and_signals_sent_while_frozen_arrive(c_target) -> None:
    """Relative sleeps come back as restart_syscall, not EINTR; a signal queued while
    frozen stays queued (with its siginfo) through injected calls and reaches the pause()d thread once released."""
    t = c_target("sleeper", "800")
    tids = {k: int(v) for k, v in t.ready().items()}
    expected = {"nanosleep": (NR.nanosleep, -ERESTART_RESTARTBLOCK), "futex": (NR.futex, -ERESTART_RESTARTBLOCK),
                "clock_abs": (NR.clock_nanosleep, -ERESTARTNOHAND), "pause": (NR.pause, -ERESTARTNOHAND)}
    for kind, (nr, _) in expected.items():
        wait_in_syscall(t.pid, tids[kind], nr)
    with freeze(t.pid) as proc:
        for kind, (nr, code) in expected.items():
            regs = proc.thread(tids[kind]).snapshot.regs
            assert (regs.orig_rax, signed(regs.rax)) == (nr, code), kind
            inject_calls(proc.injector(tids[kind]))
        os.kill(t.pid, signal.SIGUSR1)
        time.sleep(0.01)
        inject_calls(proc.injector(tids["pause"]))  # signals are blocked while injecting: SIGUSR1 stays queued
        assert proc.thread(tids["pause"]).deferred == []
        assert shared_pending(t.pid) & (1 << (signal.SIGUSR1 - 1))
        time.sleep(0.2)
    done = {}
    while len(done) < 4:
        parts = t.expect("DONE").split()
        done[parts[1]] = dict(p.split("=") for p in parts[2:])
    assert done["pause"] == {"ret": "-1", "errno": str(errno.EINTR)}
    for kind in ("nanosleep", "futex", "clock_abs"):
        assert done[kind]["eintr"] == "0", f"{kind} saw EINTR: {done[kind]}"
    t.expect("PASS")


def test_sigtrap_ignoring_target_keeps_its_disposition(c_target) -> None:
    """Single steps force SIGTRAP, which resets SIG_IGN to SIG_DFL: such targets are
    driven through syscall stops instead."""
    t = c_target("spin", "2", "t")
    t.ready()
    trap = 1 << (signal.SIGTRAP - 1)
    assert sig_ignored(t.pid) & trap
    with freeze(t.pid) as proc:
        assert proc.sigtrap_ignored
        inj = proc.injector()
        assert not inj.single_step
        inject_calls(inj)
        inject_calls(proc.injector(max(proc.threads)))
    assert sig_ignored(t.pid) & trap
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def sig_ignored(pid: int) -> int:
    return status_mask(pid, "SigIgn")


def shared_pending(pid: int) -> int:
    return status_mask(pid, "ShdPnd")


def status_mask(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith(f"{key}:"))


# --- syscall_restart_frame ---

def frame(orig_rax: int, rax: int, rip: int = 0x401002) -> user_regs_struct:
    r = user_regs_struct()
    r.orig_rax, r.rax, r.rip = orig_rax & U64, rax & U64, rip
    return r


@pytest.mark.parametrize("code", [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND])
def test_restart_frame_rewinds_onto_the_syscall(code: int) -> None:
    before = frame(NR.read, -code)
    after = syscall_restart_frame(before)
    assert (after.rax, after.rip, after.orig_rax) == (NR.read, 0x401000, U64)
    assert signed(before.rax) == -code, "the input frame must not change"


def test_restart_frame_leaves_a_restart_block_call_to_the_blocked_module() -> None:
    """-ERESTART_RESTARTBLOCK: how such a call resumes after a restore is ckpt.resources.blocked's choice."""
    before = frame(NR.nanosleep, -ERESTART_RESTARTBLOCK)
    assert bytes(syscall_restart_frame(before)) == bytes(before)


@pytest.mark.parametrize(("orig", "rax"), [(NR.read, 5), (NR.read, -errno.EAGAIN), (-1, -ERESTARTSYS), (-1, 7)])
def test_restart_frame_leaves_finished_syscalls_and_user_code_alone(orig: int, rax: int) -> None:
    before = frame(orig, rax)
    assert bytes(syscall_restart_frame(before)) == bytes(before)


@pytest.mark.parametrize("fixup", [True, False], ids=["fixed-up", "raw"])
def test_restart_frame_when_resumed_from_a_syscall_exit_stop(c_target, fixup: bool) -> None:
    """PTRACE_CONT from a syscall-exit stop returns to user space without passing
    get_signal(), so nothing finishes the interrupted read: the raw frame leaks
    errno 512 to the program, the fixed-up one runs read() again."""
    message = "after-syscall-exit"
    t = c_target("blocked_read", "main", message, stdin_pipe=True)
    t.ready()
    tid = t.pid
    wait_in_syscall(t.pid, tid, NR.read)
    ptrace.seize(tid, ptrace.PTRACE_O_TRACESYSGOOD)
    try:
        ptrace.interrupt(tid)
        assert ptrace.waitpid(tid).kind is StopKind.EVENT_STOP
        saved = ptrace.getregs(tid)
        assert signed(saved.rax) == -ERESTARTSYS
        run_to_syscall_exit(tid, find_syscall_insn_of(t.pid), saved, NR.getpid)
        ptrace.setregs(tid, syscall_restart_frame(saved) if fixup else saved)
        ptrace.cont(tid)
        if fixup:
            wait_in_syscall(t.pid, tid, NR.read)
            t.write(message.encode())
            t.expect("PASS")
        else:
            assert "errno 512" in t.readline()
        assert ptrace.waitpid(tid).exited  # blocked_read exits after its verdict
    except BaseException:
        t.close()  # SIGKILL ends a tracee in any state
        raise


def find_syscall_insn_of(pid: int) -> int:
    with ProcMem(pid) as mem:
        return find_syscall_insn(pid, mem)


def run_to_syscall_exit(tid: int, insn: int, base: user_regs_struct, nr: int) -> None:
    """Run syscall ``nr`` at ``insn`` between PTRACE_SYSCALL stops; stay at its exit stop."""
    regs = base.copy()
    regs.rip, regs.rax, regs.orig_rax = insn, nr, U64
    ptrace.setregs(tid, regs)
    for _ in ("entry", "exit"):
        ptrace.syscall_step(tid)
        assert ptrace.waitpid(tid).kind is StopKind.SYSCALL


def test_signals_sent_during_injection_are_delivered_after_release(c_target) -> None:
    """A target's threads block every signal while calls are injected: a signal sent meanwhile
    stays queued, untouched (no handler runs on an injected frame), and arrives after the release."""
    t = c_target("spin")
    t.ready()
    with freeze(t.pid) as proc:
        inj = proc.injector()
        for _ in range(2):
            os.kill(t.pid, signal.SIGUSR1)
            time.sleep(0.01)
            inject_calls(inj)
        assert proc.main_thread.deferred == []
        assert shared_pending(t.pid) & (1 << (signal.SIGUSR1 - 1))
        assert proc.injector().getpid() == t.pid
    t.expect("PASS")


def test_threads_in_a_temporary_mask_keep_their_own_mask(c_target) -> None:
    """sigsuspend/ppoll/pselect run with a temporary mask: PTRACE_GETSIGMASK gives the thread's own
    (saved) one, and putting that back after calls were injected (every signal blocked meanwhile)
    leaves the thread with its own mask once the call — restarted by the kernel — returns."""
    t = c_target("tempmask")
    tids = {k: int(v) for k, v in t.ready().items()}
    for kind, nr in (("main", NR.rt_sigsuspend), ("ppoll", NR.ppoll), ("pselect", NR.pselect6)):
        wait_in_syscall(t.pid, tids[kind], nr)
    with freeze(t.pid) as proc:
        for tid in tids.values():
            assert proc.thread(tid).snapshot.sigmask == (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1))
            inject_calls(proc.injector(tid))
    for kind, name in (("main", "sigsuspend"), ("ppoll", "ppoll"), ("pselect", "pselect")):
        syscall(NR.tgkill, t.pid, tids[kind], signal.SIGUSR1)  # to that thread: its temporary mask lets it in
        assert t.expect("WOKE") == f"WOKE {name} mask_ok=1"


def test_target_without_the_code_sequences_gets_unguarded_calls(c_target, monkeypatch) -> None:  # noqa: ANN001
    """No `syscall; ret` / rt_sigreturn pair found (a binary without libc): calls run at the vDSO's syscall,
    and between two calls every thread holds its own registers and mask again."""
    from ckpt.control import guard
    monkeypatch.setattr(guard, "find_chain", lambda mem, vmas: None)
    t = c_target("spin", "2")
    t.ready()
    with freeze(t.pid) as proc:
        assert proc.guard.chain is None and proc.own_areas() == []
        for tid in proc.threads:
            inject_calls(proc.injector(tid))
            assert bytes(ptrace.getregs(tid)) == proc.thread(tid).snapshot.regs_raw
            assert ptrace.getsigmask(tid) == proc.thread(tid).snapshot.sigmask
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


@pytest.mark.parametrize("guarded", [True, False])
def test_a_call_the_process_answers_in_ckpts_place_is_refused(c_target, monkeypatch, guarded: bool) -> None:  # noqa: ANN001
    """The thread enters another syscall than the one loaded (as if its own code ran first: an rseq abort
    handler, a signal handler): PTRACE_GET_SYSCALL_INFO tells, the call is refused naming both, and the
    target is left as it was (the next call is ours again, and it checks its own state)."""
    from ckpt.control import guard
    from ckpt.errors import TargetError
    if not guarded:
        monkeypatch.setattr(guard, "find_chain", lambda mem, vmas: None)
    t = c_target("spin", "2")
    t.ready()
    with freeze(t.pid) as proc:
        inj = proc.injector()
        label = inj._load(NR.getppid, (), None)
        regs = ptrace.getregs(inj.tid)
        regs.rax = NR.getpid  # what runs is not what ckpt loaded
        ptrace.setregs(inj.tid, regs)
        with pytest.raises(TargetError, match=rf"injected getppid, but the kernel entered syscall getpid"):
            inj._run(label)
        assert inj.getpid() == t.pid
    assert tracer_of(t.pid) == 0
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")
