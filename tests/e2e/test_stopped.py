"""Stopped processes (job control: SIGSTOP, SIGTSTP) stay stopped through a dump -R, a pre-dump and a restore.

scenarios/stopped.c has two stopped children: A, whose stop its parent has not waited for yet (a later
``waitpid(WUNTRACED)`` reports it), and B, whose stop it has (it is not reported again).  After the
operation the root checks that both are still in state T, that it got no SIGCHLD meanwhile and that its wait
view is as it was, then continues and reaps them (PASS).  The root itself may be stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from targets import Target, kill_all, thread_state, wait_until
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _start(c_target) -> tuple[Target, list[int]]:  # noqa: ANN001
    t = c_target("stopped", stderr=subprocess.DEVNULL)
    ids = t.ready()
    return t, [t.pid, int(ids["a"]), int(ids["b"])]


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: thread_state(pid, pid) == "T", f"process {pid} is stopped")


def _round(t: Target, root_stopped: bool) -> None:
    """The root's check: the children are still stopped with the wait view kept; PASS."""
    if root_stopped:
        assert thread_state(t.pid, t.pid) == "T", "the stopped root runs"
        os.kill(t.pid, signal.SIGCONT)
    os.kill(t.pid, signal.SIGUSR1)
    line = t.expect("PASS")
    assert line.startswith("PASS"), line


@pytest.mark.parametrize("root_stopped", [False, True], ids=["children", "root-too"])
def test_stopped_children_stay_stopped_after_dump_leave_running(c_target, tmp_path: Path,  # noqa: ANN001
                                                                root_stopped: bool) -> None:
    t, pids = _start(c_target)
    try:
        if root_stopped:
            _stop(t.pid)
        api.dump(t.pid, tmp_path / "img", leave_running=True)
        # PTRACE_DETACH of a task in a group stop wakes it to re-enter the stop in the kernel (no instruction
        # of its own): /proc may show R for that instant, more often now that -R syncs nothing after it.
        wait_until(lambda: [thread_state(p, p) for p in pids[1:]] == ["T", "T"], "the children are stopped again")
        _round(t, root_stopped)
    finally:
        kill_all(pids)


@pytest.mark.parametrize("root_stopped", [False, True], ids=["children", "root-too"])
def test_stopped_children_stay_stopped_after_restore(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                      root_stopped: bool) -> None:
    t, pids = _start(c_target)
    try:
        if root_stopped:
            _stop(t.pid)
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        assert [thread_state(p, p) for p in pids[1:]] == ["T", "T"]
        _round(t, root_stopped)
    finally:
        kill_all(pids)


@pytest.mark.parametrize("track", ["uffd-wp", "hash"])
def test_stopped_process_stays_stopped_after_pre_dump(c_target, tmp_path: Path, track: str) -> None:  # noqa: ANN001
    """Pre-dumps (one process) of a stopped process leave it stopped, and its parent sees no new stop."""
    from backends import need_method
    need_method(track)
    t = c_target("sleeper", "600000", stderr=subprocess.DEVNULL)
    t.ready()
    try:
        _stop(t.pid)
        os.waitpid(t.pid, os.WUNTRACED)  # the stop is reported: it must not be reported again
        api.pre_dump(t.pid, tmp_path / "pre", track=track)
        api.pre_dump(t.pid, tmp_path / "pre2", prev_images_dir=tmp_path / "pre", track=track)
        assert thread_state(t.pid, t.pid) == "T", "the pre-dump let a stopped process run"
        api.dump_delta(t.pid, tmp_path / "img", prev_images_dir=tmp_path / "pre2", leave_running=True)
        assert thread_state(t.pid, t.pid) == "T", "the dump -R let a stopped process run"
        assert os.waitid(os.P_PID, t.pid, os.WSTOPPED | os.WNOHANG | os.WNOWAIT) is None, "its stop was reported again"
    finally:
        kill_all([t.pid])
