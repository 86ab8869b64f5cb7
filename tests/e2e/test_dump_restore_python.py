"""A real Python interpreter dumped and restored: its objects intact, its loop going on, its stdout pipe back."""

from __future__ import annotations

import os
import signal
import select
import subprocess
import time

import pytest

from ckpt.dump import dump, restore
from targets import tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _next(t, prefix: str, timeout: float = 10.0) -> dict[str, str]:  # noqa: ANN001
    """The next line starting with ``prefix``; an EOF is not an error (between a dump and a restore the
    pipe has no writer), only the timeout is."""
    deadline = time.monotonic() + timeout
    fd = t.proc.stdout.fileno()
    while True:
        while b"\n" in t._buf:
            line, t._buf = t._buf.split(b"\n", 1)
            text = line.decode()
            t.lines.append(text)
            if text.startswith(prefix):
                return {"line": text, **_fields(text)}
        left = deadline - time.monotonic()
        assert left > 0, f"no {prefix} line within {timeout}s: {t.lines[-5:]}"
        if select.select([fd], [], [], min(left, 0.05))[0]:
            chunk = os.read(fd, 65536)
            if chunk:
                t._buf += chunk
            else:
                time.sleep(0.01)


def _ticks(t) -> list[int]:  # noqa: ANN001
    return [int(_fields(x)["n"]) for x in t.lines if x.startswith("TICK")]


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
def test_python_target_round_trip(py_target, tmp_path, restored: list[int], leave_running: bool) -> None:  # noqa: ANN001
    t = py_target("py_state.py", stderr=subprocess.DEVNULL)
    ready = _next(t, "READY", timeout=20)
    pid = t.pid
    n_before = int(_next(t, "TICK")["n"])
    if leave_running:
        dump(pid, tmp_path / "img1", leave_running=True)
        assert int(_next(t, "TICK")["n"]) > n_before and tracer_of(pid) == 0
        n_before = int(_next(t, "TICK")["n"])
        stats = dump(pid, tmp_path / "img", leave_running=True)  # the second dump of the same live process
        os.kill(pid, signal.SIGKILL)
        t.proc.wait(timeout=10)
    else:
        stats = dump(pid, tmp_path / "img")
        t.proc.returncode = -signal.SIGKILL  # ended and reaped by the dump; never wait on the pid again

    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == pid and tracer_of(pid) == 0
    os.kill(pid, signal.SIGUSR1)
    check = _next(t, "CHECK")
    assert check["line"].startswith("CHECK PASS") and check["digest"] == ready["digest"], check
    n_check = int(check["n"])
    assert int(_next(t, "TICK")["n"]) == n_check  # and it keeps printing, counting on
    ticks = _ticks(t)
    if not leave_running:  # one process history: every tick once, none lost, none repeated
        assert ticks == list(range(1, n_check + 1)), ticks
    else:  # the original ran on after the second dump; the restored one counts on from that dump
        assert n_before < n_check
    print(f"python target: dump {stats.total_seconds * 1e3:.0f} ms (frozen {stats.frozen_seconds * 1e3:.0f} ms), "
          f"restore {r.total_seconds * 1e3:.0f} ms")
