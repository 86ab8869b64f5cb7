"""Killing ckpt at any instant leaves its target running as before (issue 14, "kill-safety by design").

Each case runs a real ``ckpt dump -R`` against the self-checking target
(scenarios/cr_target.c: threads holding vector registers, one blocked in
read(), one in a relative nanosleep) and has ckpt SIGKILL itself at a named
point of an injected call (ckpt.testpoint): with the call's registers loaded,
at its syscall-entry stop, at its exit stop, or while putting a thread back.
The target must carry on checking itself — registers, memory, blocked mask,
no spurious EINTR — pass its full check on SIGUSR1, and the next ckpt run on
it must succeed and remove whatever the killed one left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt.control.guard import AREA_PATH
from ckpt.procfs.stat import read_stat
from targets import tracer_of, wait_until
from test_dump_restore import _parse, _queue_blocked_usr2, _result, _start, _status, _tids

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump needs root (ptrace)")

CKPT = [sys.executable, "-m", "ckpt.cli"]

#: (point, occurrence): early and late calls of the dump, each phase of a call, and the release.
POINTS = [("inject.loaded", 1), ("inject.entered", 1), ("inject.done", 1), ("inject.loaded", 7),
          ("inject.entered", 12), ("inject.done", 25), ("release.mask", 1), ("release.mask", 3)]


def _masks(pid: int) -> dict[int, str]:
    return {tid: _thread_status(pid, tid, "SigBlk") for tid in _tids(pid)}


def _thread_status(pid: int, tid: int, key: str) -> str:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _leftovers(pid: int) -> list[str]:
    """ckpt's injection areas (a memfd of that name) still mapped in the target, or their descriptors."""
    with open(f"/proc/{pid}/maps") as f:
        found = [line for line in f if AREA_PATH in line]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(AREA_PATH):
                found.append(f"fd {fd}")
        except FileNotFoundError:
            pass
    return found


@pytest.mark.parametrize("point,nth", POINTS, ids=[f"{p}-{n}" for p, n in POINTS])
def test_dump_killed_mid_injection_leaves_the_target_running(c_target, tmp_path: Path, point: str, nth: int) -> None:  # noqa: ANN001
    t, _ = _start(c_target, tmp_path, 2, blocked=True)
    pid = t.pid
    before = _result(t)
    masks = _masks(pid)
    _queue_blocked_usr2(pid)
    env = {**os.environ, "CKPT_TEST_HOOK": f"{point}:kill:{nth}"}
    r = subprocess.run([*CKPT, "dump", "-R", "-t", str(pid), "-D", str(tmp_path / "img")], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, f"ckpt did not reach {point} #{nth}: {r.returncode} {r.stderr}"
    wait_until(lambda: tracer_of(pid) == 0, "the kernel let the target go")
    # Every thread's own blocked mask again, not the all-blocked one of the injection (a thread the
    # kernel let go mid-call puts it back itself, with rt_sigreturn, once it runs).
    wait_until(lambda: _masks(pid) == masks, "every thread has its own blocked mask")
    after = _result(t, fresh=True)  # still running, still checking itself (a FAIL line fails here)
    assert int(after["round"]) > int(before["round"])
    assert after["eintr"] == before["eintr"], "the sleeping thread saw an EINTR"
    assert after["readres"] == "-2", "the blocked read() returned"
    leftover = _leftovers(pid)

    # The next run succeeds, and removes the area the killed one may have left (with a note).
    r = subprocess.run([*CKPT, "dump", "-R", "-t", str(pid), "-D", str(tmp_path / "img2")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ("injection area" in r.stderr) == bool(leftover), (leftover, r.stderr)
    assert _leftovers(pid) == []
    os.kill(pid, signal.SIGUSR1)
    check = _parse(t.expect("CHECK"))
    assert t.lines[-1].startswith("CHECK PASS"), t.lines[-1]
    assert check["usr2"] == "1"
    t.write(b"still-reading")
    wait_until(lambda: _result(t)["readres"] != "-2", "the blocked read() returns what we write")
    assert _result(t)["readbuf"] == "still-reading"


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE],
                         ids=lambda s: signal.Signals(s).name)
def test_dump_ended_by_a_signal_puts_the_target_back_and_leaves_nothing(c_target, tmp_path: Path, signo: int) -> None:  # noqa: ANN001
    """SIGTERM (kill, timeout, a service stop), SIGHUP, SIGINT (Ctrl-C) and SIGPIPE take one clean way out:
    the target is put back at once, ckpt's area and descriptors in it are gone, no image is left."""
    t, _ = _start(c_target, tmp_path, 2, blocked=True)
    pid = t.pid
    before = _result(t)
    masks = _masks(pid)
    env = {**os.environ, "CKPT_TEST_HOOK": "inject.done:stop:6"}  # ckpt stops itself mid-dump, the target frozen
    p = subprocess.Popen([*CKPT, "dump", "-t", str(pid), "-D", str(tmp_path / "img")], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: read_stat(p.pid).state == "T", "ckpt stopped itself at the hook")
    assert tracer_of(pid) == p.pid
    os.kill(p.pid, signo)
    os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signo, err
    assert tracer_of(pid) == 0 and _masks(pid) == masks and _leftovers(pid) == []
    assert not (tmp_path / "img").exists() and [x for x in tmp_path.iterdir() if ".tmp" in x.name] == []
    after = _result(t, fresh=True)
    assert int(after["round"]) > int(before["round"]) and after["eintr"] == before["eintr"]



def _tree_round(t, pids: list[int]) -> None:  # noqa: ANN001
    """Every process of scenarios/noarea.c passes a round (its counter moved, memfd_create as its limit says)."""
    for p in pids:
        os.kill(p, signal.SIGUSR1)
        wait_until(lambda p=p: any(line == f"PASS pid={p}" for line in t.lines) or
                   t.readline().startswith("FAIL"), f"process {p} passes a round")
    assert not [line for line in t.lines if line.startswith("FAIL")], t.lines


@pytest.mark.parametrize("point,nth", [("inject.entered", 2), ("inject.done", 4), ("inject.loaded", 8)],
                         ids=lambda v: str(v))
def test_tree_dump_killed_while_the_areas_open(c_target, tmp_path: Path, point: str, nth: int) -> None:  # noqa: ANN001
    """ckpt killed while it maps the injection areas of a tree's processes, one of which refuses its area (no
    descriptor left for its memfd: its calls are injected unguarded): each process carries on, and the next run removes
    what the killed one left and says which process went without an area."""
    t = c_target("noarea", stderr=subprocess.DEVNULL)
    pids = [int(p) for p in t.ready()["pids"].split(",")]
    _tree_round(t, pids)
    env = {**os.environ, "CKPT_TEST_HOOK": f"{point}:kill:{nth}"}
    r = subprocess.run([*CKPT, "dump", "-R", "-t", str(pids[0]), "-D", str(tmp_path / "img")], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, f"ckpt did not reach {point} #{nth}: {r.returncode} {r.stderr}"
    for p in pids:
        wait_until(lambda p=p: tracer_of(p) == 0, f"the kernel let {p} go")
    _tree_round(t, pids)

    r = subprocess.run([*CKPT, "dump", "-R", "-t", str(pids[0]), "-D", str(tmp_path / "img2")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"process {pids[1]} refused ckpt's injection area" in r.stderr
    assert all(_leftovers(p) == [] for p in pids)
    _tree_round(t, pids)
