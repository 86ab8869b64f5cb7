"""freeze(): seizing every thread of real processes and putting them back unharmed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ckpt.control.seize import freeze
from ckpt.procfs.task import read_starttime
from ckpt.errors import AccessDenied, TargetGone
from ckpt.kernel import ptrace, vm
from ckpt.kernel.arch_x86_64 import NR
from ckpt.kernel.ptrace import StopKind
from targets import thread_state, tracer_of, traced_threads, wait_until


def counter(pid: int, addr: int) -> int:
    return int.from_bytes(vm.read_memory(pid, addr, 8), "little")


def test_freeze_while_threads_come_and_go(c_target) -> None:
    t = c_target("threads", "2")
    addr = int(t.ready()["counter"], 16)
    for _ in range(10):
        with freeze(t.pid) as proc:
            tids = set(os.listdir(f"/proc/{t.pid}/task"))
            assert {str(tid) for tid in proc.threads} == tids, "a thread escaped the freeze"
            assert all(thread_state(t.pid, tid) == "t" for tid in proc.threads)
            assert all(th.snapshot.stop.kind is StopKind.EVENT_STOP for th in proc.threads.values())
            before = counter(t.pid, addr)
            time.sleep(0.01)
            assert counter(t.pid, addr) == before
            assert proc.injector().getpid() == t.pid
        assert traced_threads(t.pid, os.getpid()) == []
        before = counter(t.pid, addr)
        wait_until(lambda: counter(t.pid, addr) != before, "the counter moves again")
    assert t.alive()


def test_missing_pid_is_target_gone() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    with pytest.raises(TargetGone) as exc:
        with freeze(pid):
            pass
    assert exc.value.pid == pid


def test_reused_pid_is_refused(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with pytest.raises(TargetGone, match="reused"):
        with freeze(t.pid, start_time=read_starttime(t.pid) - 1):
            pass
    assert tracer_of(t.pid) == 0


def test_zombie_is_target_gone() -> None:
    child = subprocess.Popen(["true"])
    try:
        wait_until(lambda: thread_state(child.pid, child.pid) == "Z", "the child is a zombie")
        with pytest.raises(TargetGone, match="zombie"):
            with freeze(child.pid):
                pass
    finally:
        child.wait()


def test_already_traced_is_access_denied(c_target) -> None:
    t = c_target("spin")
    t.ready()
    code = ("import sys, time; from ckpt.kernel import ptrace; ptrace.seize(int(sys.argv[1]));"
            " print('SEIZED', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code, str(t.pid)], stdout=subprocess.PIPE, close_fds=True)
    try:
        assert other.stdout.readline() == b"SEIZED\n"
        with pytest.raises(AccessDenied):
            with freeze(t.pid):
                pass
    finally:
        other.kill()
        other.wait()
        other.stdout.close()
    wait_until(lambda: tracer_of(t.pid) == 0, "the other tracer's exit detached the target")
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exceptions_release_the_target(c_target, exc_type: type[BaseException]) -> None:
    t = c_target("spin", "2")
    t.ready()
    with pytest.raises(exc_type):
        with freeze(t.pid) as proc:
            proc.injector().getpid()  # leaves the trap flag set: only a detach clears it
            raise exc_type("stop here")
    assert traced_threads(t.pid, os.getpid()) == []
    time.sleep(0.05)  # a thread left single-stepping would die of SIGTRAP now
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def test_stopped_process_stays_stopped(c_target) -> None:
    t = c_target("spin")
    t.ready()
    os.kill(t.pid, signal.SIGSTOP)
    wait_until(lambda: thread_state(t.pid, t.pid) == "T", "the target is stopped")
    with freeze(t.pid) as proc:
        assert proc.main_thread.snapshot.stop.kind is StopKind.GROUP_STOP
        assert proc.injector().getpid() == t.pid
    time.sleep(0.05)
    assert thread_state(t.pid, t.pid) == "T"
    os.kill(t.pid, signal.SIGCONT)
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def test_interrupted_between_step_and_wait(c_target) -> None:
    """Ctrl-C right after an injected single step was started: release must collect
    that stop before putting the registers back and detaching."""
    t = c_target("spin")
    t.ready()
    with pytest.raises(KeyboardInterrupt):
        with freeze(t.pid) as proc:
            th, inj = proc.main_thread, proc.injector()
            regs = th.snapshot.regs
            regs.rip, regs.rax, regs.orig_rax = inj.syscall_insn, NR.getpid, (1 << 64) - 1
            ptrace.setregs(th.tid, regs)
            th.regs_changed = True
            th.resume(ptrace.singlestep)
            raise KeyboardInterrupt
    assert traced_threads(t.pid, os.getpid()) == []
    time.sleep(0.05)
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")
