"""``ckpt watch`` and ``ckpt track`` as a user runs them, against the writer scenario."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backends import need_method
from targets import HANG_GUARD, tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="watch injects into the target: needs root")
REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]
NPAGES, RATE = 2048, 2000


def uffds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                out.append(fd)
        except OSError:
            pass
    return out


@contextmanager
def running_watch(pid: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """`ckpt watch -t PID` past its first interval; on leaving, Ctrl-C, and a clean exit that removed tracking."""
    proc = subprocess.Popen([*CKPT, "watch", "-t", str(pid), "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout.readline().startswith("interval 1:")
        yield proc
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "tracking removed" in err


def test_watch_three_intervals_json(c_target) -> None:
    need_method("uffd-wp")  # the default where it works; soft-dirty: test_watch_soft_dirty
    t = c_target("writer", str(NPAGES), "1", str(RATE), "0", stdin_pipe=True)
    area = int(t.ready()["area"], 16)
    res = subprocess.run([*CKPT, "watch", "-t", str(t.pid), "--interval", "0.3", "--count", "3", "--json"],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode == 0, res.stderr
    samples = [json.loads(line) for line in res.stdout.splitlines()]
    assert [s["interval"] for s in samples] == [1, 2, 3]
    for s in samples:
        main = [r for r in s["ranges"] if int(r["start"], 16) <= area < int(r["end"], 16)]
        assert len(main) == 1
        # RATE random writes/s over NPAGES pages: ~0.3 s * 2000 = 600 writes, ~520 distinct pages
        assert 200 < main[0]["written_pages"] <= 700, main
        assert 2 < s["mb_s"] < 20 and s["method"] == "uffd-wp"
    assert uffds(t.pid) == [] and t.alive()
    text = subprocess.run([*CKPT, "watch", "-t", str(t.pid), "--interval", "0.2", "--count", "1"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert text.returncode == 0 and "MB/s" in text.stdout and "interval 1:" in text.stdout


def test_ctrl_c_leaves_the_target_running_and_untracked(c_target) -> None:
    need_method("uffd-wp")
    t = c_target("writer", "256", "1", "500", "1", stdin_pipe=True)
    t.ready()
    with running_watch(t.pid):
        assert len(uffds(t.pid)) == 1  # parked while watching
    assert t.alive() and uffds(t.pid) == [] and tracer_of(t.pid) == 0
    t.write(b"t\n")  # still serving
    t.expect("OK")


def test_watch_soft_dirty(c_target, tmp_path) -> None:
    """soft-dirty watches like uffd-wp (freezing the target for each get+clear) and leaves nothing behind."""
    need_method("soft-dirty")
    t = c_target("writer", str(NPAGES), "1", str(RATE), "0", stdin_pipe=True)
    area = int(t.ready()["area"], 16)
    res = subprocess.run([*CKPT, "watch", "-t", str(t.pid), "--track", "soft-dirty", "--interval", "0.3",
                          "--count", "3", "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    samples = [json.loads(line) for line in res.stdout.splitlines()]
    assert [s["interval"] for s in samples] == [1, 2, 3]
    for s in samples:
        assert s["method"] == "soft-dirty"
        main = [r for r in s["ranges"] if int(r["start"], 16) <= area < int(r["end"], 16)]
        assert len(main) == 1 and main[0]["written_pages"] > 0, main  # the writer never stops writing
    assert t.alive() and tracer_of(t.pid) == 0
    # track --start / --stop: the bits stay in the page tables, the state file names the method
    env = dict(os.environ, CKPT_STATE_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([*CKPT, "track", "-t", str(t.pid), *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=120, env=env, cwd=REPO)
    res = run("--start", "--track", "soft-dirty")
    assert res.returncode == 0 and "soft-dirty" in res.stdout, res.stderr
    res = run("--stop")
    assert res.returncode == 0 and "stopped soft-dirty" in res.stdout, res.stderr
    assert t.alive() and tracer_of(t.pid) == 0 and uffds(t.pid) == []


def test_usage_errors_and_track_start_stop(c_target, tmp_path) -> None:
    bad = subprocess.run([*CKPT, "watch", "-t", "1", "--ranges", "10-5"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "bad address range" in bad.stderr
    gone = subprocess.run([*CKPT, "watch", "-t", "999999999", "--count", "1"], capture_output=True, text=True,
                          timeout=30)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    need_method("uffd-wp")
    t = c_target("writer", "64", "1", "100", "0", stdin_pipe=True)
    t.ready()
    env = dict(os.environ, CKPT_STATE_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([*CKPT, "track", "-t", str(t.pid), *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=30, env=env, cwd=REPO)
    res = run("--start")
    assert res.returncode == 0, res.stderr
    assert len(uffds(t.pid)) == 1 and (tmp_path / f"track-{t.pid}.json").exists()
    res = run("--stop")
    assert res.returncode == 0 and "stopped uffd-wp" in res.stdout, res.stderr
    assert uffds(t.pid) == [] and t.alive()
    assert "no tracking" in run("--stop").stdout
