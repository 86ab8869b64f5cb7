"""A killed, interrupted or failing restore leaves nothing behind, and the image restores right after.

``ckpt restore`` (foreground and ``-d``) of a process tree (scenarios/tree.c:
seven processes, a thread, a zombie) is stopped at each named point of the
restore (``CKPT_TEST_HOOK=NAME:stop``, ckpt/testpoint.py) — the root's helper just made and
not seized, seized, its children's helpers cloned and traced, memory filled,
threads made, everything built — and then SIGKILLed, SIGTERMed or
interrupted (SIGINT); or it fails there (``CKPT_TEST_HOOK=NAME:fail``).  Afterwards no
process may hold a pid of the image, none may be left traced or stopped, and
no copy of ckpt may be left in its session; a failed or interrupted restore
has reaped everything by the time it exits, a killed one leaves only what
PID 1 reaps.  Then the same image restores and the tree checks itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt import api, testpoint
from ckpt import dump as dump_module
from ckpt.image.reader import Image
from targets import HANG_GUARD, Target, kill_all, tracer_of, wait_until
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restore needs root (ptrace, clone3 set_tid)")
CKPT = [sys.executable, "-m", "ckpt.cli"]
POINTS = list(testpoint.RESTORE_POINTS)
#: One point before the root's helper is seized, one with the tree's helpers made and traced.
SOME_POINTS = ["restore-helper-created", "restore-memory-filled"]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, sid) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[3])


def _leftovers(image_pids: list[int], restorer: int) -> dict[int, str]:
    """What a restore by ``restorer`` (its own session) left: processes with an image pid, or in its session."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == restorer:
            continue
        pid = int(d)
        st = _stat(pid)
        if st is not None and (pid in image_pids or st[2] == restorer):
            out[pid] = f"state {st[0]}, ppid {st[1]}, sid {st[2]}, tracer {_tracer(pid)}"
    return out


def _tracer(pid: int) -> int:
    try:
        return tracer_of(pid)
    except OSError:
        return 0


@pytest.fixture
def tree_image(c_target, tmp_path: Path) -> Iterator[tuple[Target, list[int], Path]]:  # noqa: ANN001
    """The tree target dumped (it is gone): (its Target for the stdout pipe, its pids, the image)."""
    yield from _tree_image(c_target, tmp_path)


@pytest.fixture
def stageable_tree_image(c_target, tmp_path: Path,  # noqa: ANN001
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Target, list[int], Path]]:
    """The same, as a migration would send it: no page recorded as shared by a child with its parent
    (a migration's dumps record none, and a staged restore refuses an image that has them)."""
    monkeypatch.setattr(dump_module.cow, "mark_tree", lambda parent_of, vmas_of: 0)
    yield from _tree_image(c_target, tmp_path)


def _tree_image(c_target, tmp_path: Path) -> Iterator[tuple[Target, list[int], Path]]:  # noqa: ANN001
    t = c_target("tree", str(tmp_path), stderr=subprocess.DEVNULL)
    pids = [int(p) for p in t.ready()["pids"].split(",")]
    try:
        api.dump(pids[0], tmp_path / "img")
        _forget(t)
        yield t, pids, tmp_path / "img"
    finally:
        kill_all(pids)


class _Restorer:
    """``ckpt restore`` of a target's image in a session of its own, the target's stdio pipes handed over."""

    def __init__(self, t: Target, img: Path, tmp: Path, *args: str, **env: str) -> None:
        inherit = [a for n, ours in t.stdio_fds.items() for a in ("--inherit-fd", f"fd[{ours}]:{n}")]
        self.err_path = tmp / f"restore-{time.monotonic_ns()}.err"
        with open(self.err_path, "wb") as err:  # a file: a left-over copy of ckpt could hold a pipe open
            self.proc = subprocess.Popen([*CKPT, "restore", "-D", str(img), *inherit, *args],
                                         pass_fds=tuple(t.stdio_fds.values()), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                         env={**os.environ, **env})
        self.pid = self.proc.pid

    def wait(self, *, stopped: bool = False) -> int:
        """Wait until it stops (``stopped``: at its CKPT_TEST_HOOK point) or ends; the wait status."""
        done: list[int] = []
        waiter = threading.Thread(target=lambda: done.append(os.waitpid(self.pid, os.WUNTRACED)[1]), daemon=True)
        waiter.start()
        waiter.join(HANG_GUARD)
        assert done, f"ckpt restore neither stopped nor ended within {HANG_GUARD:.0f} s: {self.stderr}"
        status = done[0]
        if stopped:
            assert os.WIFSTOPPED(status), f"ckpt restore ended ({status:#x}) before its stop point: {self.stderr}"
        elif not os.WIFSTOPPED(status):
            self.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return status

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def signal_and_reap(self, sig: int) -> int:
        """Send ``sig`` to the stopped restorer and let it go on; its exit code."""
        os.kill(self.pid, sig)
        os.kill(self.pid, signal.SIGCONT)
        status = self.wait()
        while os.WIFSTOPPED(status):  # stopped again where its point is passed once more
            os.kill(self.pid, signal.SIGCONT)
            status = self.wait()
        return os.waitstatus_to_exitcode(status)


def _reaped(pids: list[int], restorer: int) -> None:
    """Wait until PID 1 has reaped everything a dead restorer orphaned (AssertionError listing what is left)."""
    try:
        wait_until(lambda: not _leftovers(pids, restorer), "PID 1 reaped what the restore left")
    except AssertionError:
        raise AssertionError(f"left by the restore: {_leftovers(pids, restorer)}") from None


def _restore_and_check(t: Target, img: Path, tmp: Path, pids: list[int], *, detached: bool) -> None:
    """The image restores (ckpt's foreground or -d path) and every process of the tree checks itself."""
    root, pidfile = pids[0], tmp / "restored.pid"
    r = _Restorer(t, img, tmp, "--pidfile", str(pidfile), *(["-d"] if detached else []))
    if detached:
        assert os.waitstatus_to_exitcode(r.wait()) == 0, r.stderr
        assert set(_leftovers(pids, r.pid)) == set(pids)  # the intermediate is gone: the root is a daemon
        assert _stat(root)[1] not in pids and _stat(root)[1] != r.pid
    else:  # the pidfile is written once the tree runs
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(root), "the tree runs")
        assert _stat(root)[1] == r.pid  # ckpt is the root's parent
    os.kill(root, signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS tree 7 processes round=1")
    if not detached:
        os.kill(root, signal.SIGKILL)
        assert os.waitstatus_to_exitcode(r.wait()) == 128 + signal.SIGKILL  # ckpt exits with the root's status


@pytest.mark.parametrize("detached", [False, True], ids=["foreground", "detached"])
def test_restore_killed_at_every_point_leaves_nothing(tree_image, tmp_path: Path,  # noqa: ANN001
                                                      detached: bool) -> None:
    t, pids, img = tree_image
    args = ["-d"] if detached else []
    for point, sig in [*((p, signal.SIGKILL) for p in POINTS), *((p, signal.SIGTERM) for p in SOME_POINTS)]:
        r = _Restorer(t, img, tmp_path, *args, CKPT_TEST_HOOK=f"{point}:stop")
        r.wait(stopped=True)
        r.signal_and_reap(sig)
        try:
            _reaped(pids, r.pid)
        except AssertionError as exc:
            raise AssertionError(f"{signal.Signals(sig).name} at {point}: {exc}") from None
    _restore_and_check(t, img, tmp_path, pids, detached=detached)


@pytest.mark.parametrize("detached", [False, True], ids=["foreground", "detached"])
def test_restore_failing_or_interrupted_at_every_point_reaps_all(tree_image, tmp_path: Path,  # noqa: ANN001
                                                                 detached: bool) -> None:
    """No waiting here: whatever the restore made is gone when ckpt exits."""
    t, pids, img = tree_image
    args = ["-d"] if detached else []
    for point in POINTS:
        r = _Restorer(t, img, tmp_path, *args, CKPT_TEST_HOOK=f"{point}:fail")
        code = os.waitstatus_to_exitcode(r.wait())
        lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("hint:")]
        want = f"ckpt: restore of {pids[0]} failed: injected failure at {point} (CKPT_TEST_HOOK)"
        assert code == 1 and lines == [want], (code, r.stderr)
        assert _leftovers(pids, r.pid) == {}, f"failed at {point}"
    for point in SOME_POINTS:  # Ctrl-C: the same path as a failure
        r = _Restorer(t, img, tmp_path, *args, CKPT_TEST_HOOK=f"{point}:stop")
        r.wait(stopped=True)
        assert r.signal_and_reap(signal.SIGINT) == 130, r.stderr
        assert _leftovers(pids, r.pid) == {}, f"interrupted at {point}"
    _restore_and_check(t, img, tmp_path, pids, detached=detached)


#: A migration receiver's staged restore in miniature: StagedRestore.start on a thread of its own
#: (as ckpt/migrate/dest.py runs it), which reports how it ended and which pids of the image are left.
_STAGER = """
import os, sys, threading
from ckpt.restore import StagedRestore
img, pids, out = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], []
def stage():
    try:
        StagedRestore(detached=True).start(img)
        out.append("staged")
    except BaseException as exc:
        out.append(type(exc).__name__ + ": " + str(exc))
t = threading.Thread(target=stage)
t.start()
t.join()
print(out[0], "| left:", [p for p in pids if os.path.exists("/proc/%d" % p)], flush=True)
"""


@pytest.mark.parametrize("point", SOME_POINTS)
def test_staged_restore_on_a_thread_killed_or_failing_leaves_nothing(
        stageable_tree_image, tmp_path: Path, point: str) -> None:  # noqa: ANN001
    t, pids, img = stageable_tree_image
    argv = [sys.executable, "-c", _STAGER, str(img), ",".join(map(str, pids))]
    stager = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "CKPT_TEST_HOOK": f"{point}:stop"})
    _, status = os.waitpid(stager.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    os.kill(stager.pid, signal.SIGKILL)
    stager.wait()
    _reaped(pids, stager.pid)

    stager = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True, env={**os.environ, "CKPT_TEST_HOOK": f"{point}:fail"})
    out = stager.communicate(timeout=HANG_GUARD)[0]
    assert out.strip() == f"RestoreError: restore of {pids[0]} failed: injected failure at {point} " \
                          "(CKPT_TEST_HOOK) | left: []", out
    assert _leftovers(pids, stager.pid) == {}
    _restore_and_check(t, img, tmp_path, pids, detached=True)


def test_detached_restore_keeps_the_parent_death_signal(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """-d: the intermediate, the root's parent until the hand-over, ends then; the parent-death signal
    the root was given back before (writer.c sets SIGKILL) must not fire, and stays set."""
    t = c_target("writer", "64", "1", "10", "0", stdin_pipe=True, stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    try:
        r = _Restorer(t, tmp_path / "img", tmp_path, "-d")
        assert os.waitstatus_to_exitcode(r.wait()) == 0, r.stderr
        assert _stat(t.pid)[0] not in ("Z", "X") and _stat(t.pid)[1] != r.pid
        api.dump(t.pid, tmp_path / "again", leave_running=True)
        assert Image.open(tmp_path / "again").process(t.pid).flags.pdeath_signal == signal.SIGKILL
        t.write(b"t\n")  # it runs: one more writer thread
        assert t.expect("OK").startswith("OK")
    finally:
        kill_all([t.pid])
