"""Never harm the target, never leave debris: threads churning during a dump; a restore failing midway.

The dump of a process whose threads appear and exit all the time must either
succeed with a consistent image or fail cleanly, and the target runs on
either way.  A restore that fails after the helper exists must kill only
what it created, free the pid again and say why (API: RestoreError; CLI: one
line, non-zero exit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import CkptError, RestoreError
from targets import Target, tracer_of, traced_threads
from test_dump_restore import _drain, _forget, _parse

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")
CKPT = [sys.executable, "-m", "ckpt.cli"]


def _joined(t: Target) -> int:
    _drain(t)
    return int(_parse(t.expect("PASS"))["joined"])


def test_threads_churning_during_dump(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001, F811
    t = c_target("churn", stdin_pipe=True, stderr=subprocess.DEVNULL)
    t.ready()
    ok: list[Path] = []
    failures: list[str] = []
    for i in range(8):
        before = _joined(t)
        try:
            stats = dump(t.pid, tmp_path / f"img{i}", leave_running=True)
            ok.append(tmp_path / f"img{i}")
            assert stats.threads >= 3  # main and both spawners, plus the short-lived ones caught
        except CkptError as exc:  # allowed, if clean
            failures.append(str(exc))
            assert not (tmp_path / f"img{i}").exists()
        assert t.alive() and tracer_of(t.pid) == 0 and traced_threads(t.pid, os.getpid()) == []
        assert _joined(t) > before  # runs on, sums still right (a FAIL line fails expect())
    assert ok, f"no dump of a churning process succeeded: {failures}"
    print(f"churn: {len(ok)} dumps succeeded, {len(failures)} failed cleanly: {failures[:2]}")
    # the last good image restores into a process that goes on churning and checking
    before = _joined(t)
    dump(t.pid, tmp_path / "final")
    _forget(t)
    r = restore(tmp_path / "final", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _joined(t) >= before and _joined(t) > before


def test_restore_failing_midway_kills_only_its_own(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    """The image's cwd is gone: the helper is already built when chdir fails; it is killed and reaped."""
    t = c_target("cr_target", str(tmp_path / "result"), "1", stdin_pipe=True, stderr=subprocess.DEVNULL)
    t.ready()
    pid = t.pid
    dump(pid, tmp_path / "img")
    _forget(t)
    shutil.rmtree(str(tmp_path / "result") + ".d")  # cr_target's cwd
    children_before = _children()
    with pytest.raises(RestoreError, match=r"result\.d") as info:
        restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    assert str(pid) in str(info.value)
    assert not os.path.exists(f"/proc/{pid}"), "the half-built process is still there"
    assert _children() == children_before  # nothing of ours left, not even a zombie
    ins, outs = t.proc.stdin.fileno(), t.proc.stdout.fileno()
    res = subprocess.run([*CKPT, "restore", "-D", str(tmp_path / "img"), "--inherit-fd", f"fd[{ins}]:0",
                          "--inherit-fd", f"fd[{outs}]:1"], pass_fds=(ins, outs), capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    errors = [ln for ln in res.stderr.splitlines() if not ln.startswith("hint:")]
    assert res.returncode != 0 and len(errors) == 1 and errors[0].startswith("ckpt: ") and "Traceback" not in res.stderr
    assert "result.d" in errors[0], res.stderr
    assert not os.path.exists(f"/proc/{pid}")


def _children() -> set[int]:
    """Our direct children, zombies included (from /proc/*/stat ppid)."""
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2:].split()[1]) == me:
            out.add(int(d))
    return out
