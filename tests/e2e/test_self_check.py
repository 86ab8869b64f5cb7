"""The restore's self-check (ckpt/observed.py) on a real restore: a difference made on purpose is caught.

ckpt restore is stopped where a process is built and frozen (``CKPT_TEST_HOOK=restore-threads-created:stop``),
the test changes that process from outside as the kernel lets anyone with the right do (its open-files limit,
with prlimit(2)), and lets the restore go on: the check must fail the restore naming the limit, and leave
nothing under the pid.  With ``--check=off`` the same restore goes through, and the change shows.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from targets import thread_state, wait_until

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _sleeper(tmp_path: Path) -> int:
    p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    res = subprocess.run([*CKPT, "dump", "-t", str(p.pid), "-D", str(tmp_path / "img")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    p.wait()
    assert res.returncode == 0, res.stderr
    return p.pid


def _restore_changed(tmp_path: Path, pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """``ckpt restore -d``, with the process's RLIMIT_NOFILE changed while it is built and frozen."""
    proc = subprocess.Popen([*CKPT, "restore", "-d", "-D", str(tmp_path / "img"), *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, CKPT_TEST_HOOK="restore-threads-created:stop"))
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 120)
        line = proc.stderr.readline() if ready else ""
        assert line.strip() == "ckpt: paused at restore-threads-created", (line, proc.poll())
        wait_until(lambda: thread_state(proc.pid, proc.pid) == "T", "ckpt stopped itself")
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft - 1, hard))
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, line + err)


def test_a_process_changed_during_the_restore_is_refused(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    res = _restore_changed(tmp_path, pid)
    assert res.returncode == 1, res.stderr
    assert f"process {pid} came back different from the dump: limits: Max open files:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), f"nothing left under pid {pid}")


def test_check_off_restores_it_as_it_is(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    before = resource.getrlimit(resource.RLIMIT_NOFILE)  # sleep inherited ours
    res = _restore_changed(tmp_path, pid, "--check=off")
    try:
        assert res.returncode == 0, res.stderr
        assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (before[0] - 1, before[1])
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_descriptor_and_thread_state_that_used_to_be_dropped(py_target, tmp_path: Path,  # noqa: ANN001
                                                               restored: list[int]) -> None:
    """O_ASYNC with its owner and signal (socket and pipe), an O_TMPFILE file, thread names, a page made
    read-only after it was written: the process checks each itself after the restore (and the self-check
    compared what the kernel prints)."""
    from ckpt import api

    t = py_target("py_fdstate.py", stderr=subprocess.DEVNULL)
    t.ready()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS fdstate round=1"
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS fdstate round=2"


def test_a_process_under_seccomp_is_refused_at_dump(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """Its filters cannot be restored yet: the dump says so and leaves it running (the self-check would
    otherwise have refused only the restore, after the dump had ended it)."""
    t = py_target("py_seccomp.py", stderr=subprocess.DEVNULL)
    t.ready()
    res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert f"process {t.pid} runs under seccomp (mode 2, 1 filter(s)): ckpt cannot restore" in res.stderr
    assert not (tmp_path / "img").exists() and t.proc.poll() is None
    with open(f"/proc/{t.pid}/status") as f:
        assert "TracerPid:\t0" in f.read()
