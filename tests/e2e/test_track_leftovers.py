"""Trackers a killed ckpt leaves behind are mended by the next run, never refused (issue 14, item 3).

ckpt is stopped at an exact point with ``CKPT_TEST_PAUSE_AT`` (ckpt/testpoint.py)
and killed there with SIGKILL.  The target is scenarios/mig_writer.c: on SIGUSR1
it checks every word of every page against its writers' counters, so "memory
intact" is its own verdict.  Each test keeps its state files in its own
``CKPT_STATE_DIR``.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt.image.reader import Image
from targets import HANG_GUARD, Target, build_c, spawn, thread_state, tracer_of, wait_until
from test_migrate import _Mutator
from test_watch import running_watch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tracking injects into the target: needs root")

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]
UFFD = "anon_inode:[userfaultfd]"


class Writer(_Mutator):
    """scenarios/mig_writer.c (NPAGES pages, THREADS writers at RATE writes/s each), stdout in a file;
    ``check()`` sends SIGUSR1 and wants CHECK PASS.  ``uid``: run it as that user (and group)."""

    def __init__(self, tmp_path: Path, npages: int = 1024, threads: int = 2, rate: int = 500,
                 uid: int | None = None) -> None:  # noqa: D107
        self.log = tmp_path / "writer.log"

        def become() -> None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([build_c("mig_writer"), str(npages), str(threads), str(rate)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                         close_fds=True, start_new_session=True,
                                         preexec_fn=become if uid is not None else None)
        self.pid = self.proc.pid
        self.wait_for(r"READY pid=")

    def writes(self) -> list[int]:
        """Check now; the writes each writer had made when it checked."""
        return [int(x) for x in re.search(r"writes=([\d,]+)", self.check().group(2)).group(1).split(",")]


@pytest.fixture
def writer(tmp_path: Path):  # noqa: ANN201
    t = Writer(tmp_path)
    yield t
    t.close()


def uffds(pid: int) -> dict[int, int]:
    """{fd: inode} of the userfaultfds open in ``pid``."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD:
                out[int(fd)] = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
        except OSError:
            pass
    return out


def state_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, CKPT_STATE_DIR=str(tmp_path / "state"))


def ckpt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CKPT, *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def kill_at(point: str, env: dict[str, str], *args: str) -> None:
    """Run ``ckpt ARGS`` until it stops at the test point ``point``, then SIGKILL it there."""
    proc = subprocess.Popen([*CKPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=dict(env, CKPT_TEST_PAUSE_AT=point))
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 120)
        line = proc.stderr.readline() if ready else ""
        assert line.strip() == f"ckpt: paused at {point}", (line, proc.poll())
        wait_until(lambda: thread_state(proc.pid, proc.pid) == "T", f"ckpt {proc.pid} is stopped at {point}")
    finally:
        proc.kill()
        proc.communicate()


def _leftover_after_killed_predump(t: Writer, tmp_path: Path, env: dict[str, str]) -> tuple[int, int]:
    """A pre-dump SIGKILLed right after it parked its userfaultfd: (fd, inode) of what it left."""
    kill_at("uffd-parked", env, "pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "killed"))
    left = uffds(t.pid)
    assert len(left) == 1 and next(iter(left)) >= 64, left  # parked high, no state file names it
    assert not (tmp_path / "state" / f"track-{t.pid}.json").exists()
    assert t.proc.poll() is None and tracer_of(t.pid) == 0
    return next(iter(left.items()))


NEXT_RUNS: dict[str, Callable[[Path, int], list[str]]] = {
    "dump -R": lambda tmp, pid: ["dump", "-R", "-t", str(pid), "-D", str(tmp / "dump")],
    "pre-dump": lambda tmp, pid: ["pre-dump", "-t", str(pid), "-D", str(tmp / "pre")],
    "track --start": lambda tmp, pid: ["track", "--start", "-t", str(pid)],
    "watch": lambda tmp, pid: ["watch", "-t", str(pid), "--count", "1", "--interval", "0.1"],
}


@pytest.mark.parametrize("next_run", list(NEXT_RUNS))
def test_a_killed_predumps_tracker_is_closed_by_the_next_run(writer: Writer, tmp_path: Path, next_run: str) -> None:
    t, env = writer, state_env(tmp_path)
    t.check()
    fd, _ = _leftover_after_killed_predump(t, tmp_path, env)
    t.check()  # the stray tracker costs the target nothing
    res = ckpt(env, *NEXT_RUNS[next_run](tmp_path, t.pid))
    assert res.returncode == 0, res.stderr
    assert f"closed fd {fd} of process {t.pid}, a dirty-tracking userfaultfd that an interrupted ckpt run" \
           in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    now = uffds(t.pid)
    if next_run in ("pre-dump", "track --start"):  # their own tracker stays parked, named by the state file
        state = json.loads((tmp_path / "state" / f"track-{t.pid}.json").read_text())
        assert now == {state["parked_fd"]: state["uffd_inode"]}, (now, state)
    else:
        assert now == {}
    if next_run == "dump -R":
        assert sorted(e.fd for e in Image.open(tmp_path / "dump").fds(t.pid)) == [0, 1, 2]
    assert t.proc.poll() is None and tracer_of(t.pid) == 0
    t.check()  # every page as its writers left it


def test_a_killed_delta_makes_the_next_delta_from_its_parent_a_full_one(tmp_path: Path, restored: list[int]) -> None:
    """A delta pre-dump killed after its get+clear: those writes are cleared from the tracker but in no
    image.  A pre-dump from the same parent must not be a delta (it would miss them): full, with a note;
    the chain ending in it restores a process whose every page checks."""
    t = Writer(tmp_path, rate=100)  # a page is rewritten every ~5 s: the writes cleared and lost stay lost
    try:
        env = state_env(tmp_path)
        t.check()
        assert ckpt(env, "pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "1")).returncode == 0
        after_1 = t.writes()
        wait_until(lambda: min(w - a for w, a in zip(t.writes(), after_1)) >= 20, "writes after image 1")
        kill_at("collected", env, "pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "2"),
                "--prev-images-dir", str(tmp_path / "1"))
        res = ckpt(env, "pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "3"), "--prev-images-dir", str(tmp_path / "1"))
        assert res.returncode == 0, res.stderr
        assert "full" in res.stdout and "did not finish" in res.stderr, (res.stdout, res.stderr)
        assert len(uffds(t.pid)) == 1  # the tracker was taken over, not doubled
        res = ckpt(env, "dump", "-t", str(t.pid), "-D", str(tmp_path / "4"), "--prev-images-dir", str(tmp_path / "3"))
        assert res.returncode == 0, res.stderr
        t.proc.wait(timeout=HANG_GUARD)
        res = ckpt(env, "restore", "-D", str(tmp_path / "4"), "-d", "--pidfile", str(tmp_path / "pid"))
        assert res.returncode == 0, res.stderr
        restored.append(int((tmp_path / "pid").read_text()))
        t.check()  # the restored process, under the same pid
    finally:
        t.close()


def test_track_start_twice_keeps_one_tracker(writer: Writer, tmp_path: Path) -> None:
    """The second `track --start` keeps the first tracker (a note says so); asking for another method is
    refused; a pre-dump takes the parked tracker over instead of parking a second one."""
    t, env = writer, state_env(tmp_path)
    first = ckpt(env, "track", "--start", "-t", str(t.pid))
    assert first.returncode == 0, first.stderr
    parked = uffds(t.pid)
    assert len(parked) == 1
    again = ckpt(env, "track", "--start", "-t", str(t.pid))
    assert again.returncode == 0, again.stderr
    assert "already tracked" in again.stderr and "kept that tracker" in again.stderr, again.stderr
    assert uffds(t.pid) == parked
    other = ckpt(env, "track", "--start", "--track", "hash", "-t", str(t.pid))
    assert other.returncode == 2 and "already tracked" in other.stderr and "track --stop" in other.stderr
    assert uffds(t.pid) == parked
    for n, prev in ((1, []), (2, ["--prev-images-dir", str(tmp_path / "1")])):
        res = ckpt(env, "pre-dump", "-t", str(t.pid), "-D", str(tmp_path / str(n)), *prev)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        assert ("full" if n == 1 else "delta") in res.stdout
        assert uffds(t.pid) == parked
    stop = ckpt(env, "track", "--stop", "-t", str(t.pid))
    assert stop.returncode == 0 and "stopped uffd-wp" in stop.stdout, stop.stderr
    assert uffds(t.pid) == {}
    t.check()


def test_a_running_watch_is_no_leftover(writer: Writer, tmp_path: Path) -> None:
    """`ckpt watch` parks a tracker without a state file: a dump meanwhile neither closes nor saves it."""
    t, env = writer, state_env(tmp_path)
    with running_watch(t.pid, env) as watch:
        parked = uffds(t.pid)
        assert len(parked) == 1
        res = ckpt(env, "dump", "-R", "-t", str(t.pid), "-D", str(tmp_path / "d"))
        assert res.returncode == 0 and "interrupted" not in res.stderr, res.stderr
        assert sorted(e.fd for e in Image.open(tmp_path / "d").fds(t.pid)) == [0, 1, 2]
        assert uffds(t.pid) == parked
        while not watch.stdout.readline().startswith("interval "):  # the range lines of an interval
            pass  # it goes on
    assert uffds(t.pid) == {}
    t.check()


PROGRAM_OWN_UFFD = """
import fcntl, os, sys
from ckpt.kernel import uffd
from ckpt.track.uffd_wp import UFFD_FEATURES
fd = uffd.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
uffd.uffd_api(fd, UFFD_FEATURES)                  # ckpt's very features, at ckpt's very number
high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1023)
os.close(fd)
print("READY", high, flush=True)
sys.stdin.read()
"""


def test_a_userfaultfd_of_the_program_is_never_touched(tmp_path: Path) -> None:
    """Same features, same fd number as ckpt's, but without ckpt's mark: the program's own."""
    with spawn([sys.executable, "-u", "-c", PROGRAM_OWN_UFFD], stdin_pipe=True) as t:
        _own_uffd_untouched(t, tmp_path)


def _own_uffd_untouched(t: Target, tmp_path: Path) -> None:
    line = t.expect("READY").split()
    own = uffds(t.pid)
    assert list(own) == [int(line[1])] == [1023]
    env = state_env(tmp_path)
    stop = ckpt(env, "track", "--stop", "-t", str(t.pid))
    assert stop.returncode == 2 and "carries ckpt's mark" in stop.stderr and "--fd" in stop.stderr, stop.stderr
    dump = ckpt(env, "dump", "-R", "-t", str(t.pid), "-D", str(tmp_path / "d"))
    assert dump.returncode != 0 and "userfaultfd" in dump.stderr and "interrupted" not in dump.stderr, dump.stderr
    res = ckpt(env, "track", "--start", "-t", str(t.pid))
    assert res.returncode == 0 and "interrupted" not in res.stderr, res.stderr
    assert set(uffds(t.pid)) > set(own)
    assert ckpt(env, "track", "--stop", "-t", str(t.pid)).returncode == 0
    assert uffds(t.pid) == own and t.alive()
