"""A target that tries to take over ckpt's injected calls, or to make them answer lies (issue 18).

* rseq: scenarios/rseq_trap.c points its rseq_cs at a critical section that covers libc, ld.so and the
  vDSO, where ckpt finds the syscall instruction it injects through.  The kernel moves a thread that
  returns to user space inside a critical section to its abort handler after every preemption or ptrace
  stop: each injected call would run the target's code instead (it prints HIJACKED and exits).  ckpt
  hides the thread's rseq_cs while a call of its own runs (control/seize.py) and puts it back at each
  stop, so the dump, the pre-dump and the restore go through, the image records the pointer as the
  program set it, and the target finds it unchanged.
* seccomp: scenarios/seccomp_liar.c answers the calls ckpt injects with fake successes (getitimer, prctl:
  a timer of zeros, a slack of 0) and errors (mmap, munmap, madvise, membarrier, rt_sigaction).  Its
  filter does not apply to them (PTRACE_O_SUSPEND_SECCOMP): the image holds its real timer and slack, and
  the restored process is lied to as before.  (tests/e2e/test_seccomp.py has a filter that kills.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ckpt import api
from targets import wait_in_syscall, wait_until
from ckpt.kernel.arch_x86_64 import NR
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


@pytest.mark.parametrize("how", ["dump -R", "dump, restore", "pre-dump, dump, restore"])
def test_an_rseq_section_over_the_injection_site_does_not_take_over_ckpt(c_target, tmp_path: Path,  # noqa: ANN001
                                                                         restored: list[int], how: str) -> None:
    t = c_target("rseq_trap", stdin_pipe=True)
    first = t.readline()
    if first.startswith("SKIP"):
        pytest.skip(first)
    assert first == "READY", first
    wait_in_syscall(t.pid, t.pid, NR.read)
    if how == "dump -R":
        api.dump(t.pid, tmp_path / "img", leave_running=True)
    else:
        parent = {}
        if how.startswith("pre-dump"):
            api.pre_dump(t.pid, tmp_path / "pre")
            parent = {"prev_images_dir": "../pre"}
        (api.dump_delta if parent else api.dump)(t.pid, tmp_path / "img", **parent)
        _forget(t)
        restored.append(api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid)
    t.write(b"x")
    line = t.readline(timeout=30)
    assert line == "PASS", (line, t.lines)


@pytest.mark.parametrize("how", ["dump -R", "dump, restore"])
def test_a_seccomp_filter_that_lies_to_ckpts_calls_changes_nothing(c_target, tmp_path: Path,  # noqa: ANN001
                                                                  restored: list[int], how: str) -> None:
    """scenarios/seccomp_liar.c fakes getitimer and prctl answers (SECCOMP_RET_TRAP) and fails mmap, munmap,
    madvise, membarrier and rt_sigaction: the image still holds its real timer and slack, and the restored
    process is still lied to."""
    t = c_target("seccomp_liar")
    t.ready()
    wait_until(lambda: _status(t.pid, "Seccomp") == "2", "the filter is installed")
    wait_in_syscall(t.pid, t.pid, NR.pause)
    pid = t.pid
    if how == "dump -R":
        api.dump(pid, tmp_path / "img", leave_running=True)
    else:
        api.dump(pid, tmp_path / "img")
        _forget(t)
        pid = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds).pid
        restored.append(pid)
        assert _status(pid, "Seccomp") == "2"
    os.kill(pid, signal.SIGUSR1)
    line = t.expect("PASS", timeout=30)
    assert line == "PASS", (line, t.lines)


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))
