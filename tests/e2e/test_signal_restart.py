"""A caught signal that reaches a restored thread blocked in pause() or sigsuspend() ends the call with EINTR.

The kernel restarts neither call after a handler (ERESTARTNOHAND).  A restored thread whose frame was put
back onto its ``syscall`` instruction by ckpt (instead of the kernel) ran the handler of a signal that came
before it re-entered the call, and then waited in the call again for ever.  The signal is sent while every
restored process is still frozen (``before_hand_over``), the one instant that made this certain.

``running`` sends it once the restored thread is back in the call.  Sent any earlier, it may land in the
instant between the kernel's rewind of the call and the thread's ``syscall`` instruction (it can be
preempted there): the handler then runs and the call starts again.  A thread resumed from SIGSTOP or a
cgroup freeze has that same window natively, so it is the kernel's behaviour, not a restore's loss (a
full ``make test`` of 2026-12-07 sent it into that window once).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from targets import wait_in_syscall
from ckpt.kernel.arch_x86_64 import NR
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")

CALLS = {"pause": NR.pause, "sigsuspend": NR.rt_sigsuspend}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("when", ["frozen", "running"])
def test_signal_after_restore_interrupts_the_call(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                 call: str, when: str) -> None:
    t = c_target("eintr", call, stderr=subprocess.DEVNULL)
    t.ready()
    wait_in_syscall(t.pid, t.pid, CALLS[call])
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    hook = (lambda: os.kill(t.pid, signal.SIGUSR1)) if when == "frozen" else None
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds, before_hand_over=hook)
    restored.append(r.pid)
    if when == "running":
        wait_in_syscall(r.pid, r.pid, CALLS[call])
        os.kill(r.pid, signal.SIGUSR1)
    line = t.expect("PASS", timeout=20)
    assert line == "PASS", line
