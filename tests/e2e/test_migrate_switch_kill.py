"""Either ckpt killed during a migration's switch-over: never two running copies (DESIGN §6).

The source (`ckpt migrate`, this host) and the receiver (`ckpt receive`, in a
second host: tests/hosts.py) are killed at the steps of the commit
(ckpt/migrate/source.py).  Before the commit, the original runs on and the
second host holds nothing; after it, the copy runs there and the original is
never let run again — it is killed, or, when its ckpt died or the outcome is in
doubt, left in a group stop (SIGSTOP), untraced, for the user to end or resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import tracer_of, wait_until
from test_migrate import _free_port, _Mutator, _Receiver, _stores, _token, _untracked

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


@pytest.fixture
def mutator(tmp_path: Path):  # noqa: ANN201
    t = _Mutator(tmp_path)
    yield t
    t.close()


def _state(pid: int) -> str:
    """The State letter of /proc/PID/status ('' once it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "" if line.split()[1] in ("Z", "X") else line.split()[1]
    except FileNotFoundError:
        return ""
    return ""


def _env(tmp: Path, hook: str | None = None) -> dict[str, str]:
    """The killed source's work directory (its rounds' images) stays in the test's own TMPDIR: the next
    migration anywhere on the machine would remove it, with a warning another test may not expect."""
    return {**os.environ, "TMPDIR": str(tmp), **({"CKPT_TEST_HOOK": hook} if hook else {})}


def _migrate(host: SecondHost, t: _Mutator, port: int, token: Path, *extra: str,
             hook: str | None = None) -> subprocess.CompletedProcess[str]:
    env = _env(token.parent, hook)
    return subprocess.run(ckpt_argv("migrate", "-t", t.pid, "--to", f"{host.address}:{port}", "--token-file", token,
                                    "--max-downtime", "200", *extra),
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True,
                          timeout=120)


def _copy_runs_inside(host: SecondHost, t: _Mutator) -> None:
    """The restored copy runs in the second host under the original's pid, and checks out."""
    inside = {v: k for k, v in host.processes().items()}
    assert t.pid in inside, host.processes()
    wait_until(lambda: tracer_of(inside[t.pid]) == 0, "the copy is untraced")
    assert _state(inside[t.pid]) in ("S", "R"), _state(inside[t.pid])
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])
    assert t.wait_for(r"CHECK (PASS|FAIL)", after=n).group(1) == "PASS"


def _nothing_inside(host: SecondHost) -> None:
    wait_until(lambda: all(b"mutator" not in Path(f"/proc/{p}/cmdline").read_bytes()
                           for p in host.processes() if p != host.init_pid and os.path.exists(f"/proc/{p}")),
               "no copy is left in the second host")


def _original_held(t: _Mutator) -> None:
    """The original is in a group stop, untraced: it runs no code (the copy is the live one)."""
    wait_until(lambda: _state(t.pid) == "T" and tracer_of(t.pid) == 0, "the original is held stopped, untraced")


def _receiver_again(host: SecondHost, tmp_path: Path, token: Path, port: int) -> subprocess.Popen:
    """A receiver started anew on the directory (and port) of the one that took the migration: its journal
    answers ``migrate --recover``."""
    err = tmp_path / "receive-again.err"
    with open(err, "wb") as e:
        proc = host.run(ckpt_argv("receive", "--listen", f"{host.address}:{port}", "-D", tmp_path / "received",
                                  "--token-file", token), stdout=subprocess.DEVNULL, stderr=e)
    wait_until(lambda: "listening on" in err.read_text() or proc.poll() is not None, "the receiver listens", timeout=20)
    assert proc.poll() is None, err.read_text()
    return proc


def recover(pid: int, token: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``ckpt migrate --recover`` of ``pid``; it must end cleanly and leave no record of the migration."""
    res = subprocess.run(ckpt_argv("migrate", "--recover", "-t", pid, "--token-file", token, *extra),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert not Path(f"/run/ckpt/migrate/{pid}.json").exists()
    return res


def _original_ended(t: _Mutator) -> None:
    t.proc.wait(timeout=30)
    assert t.proc.returncode == -signal.SIGKILL


def _original_runs(t: _Mutator, *, tracker_left: bool = False) -> None:
    """The original runs, untraced, and checks out; untracked unless its ckpt was killed (``tracker_left``:
    a parked tracker is a killed run's leftover, which the next ckpt run on it removes)."""
    wait_until(lambda: tracer_of(t.pid) == 0, "the original is untraced")
    assert _state(t.pid) in ("S", "R")
    assert tracker_left or _untracked(t.pid)
    t.check()


def test_source_killed_once_the_destination_runs_leaves_one_running_copy(second_host: SecondHost, tmp_path: Path,
                                                                         mutator: _Mutator) -> None:
    """The post-migrate action script SIGKILLs its ckpt: the copy runs there, the original stays stopped.

    (Before the commit protocol the original was let go when its ckpt died, and both copies ran.)
    """
    host, port, token = second_host, _free_port(), _token(tmp_path)
    script = tmp_path / "kill-ckpt.sh"
    script.write_text("#!/bin/sh\n[ \"$CKPT_SCRIPT_ACTION\" = post-migrate ] && kill -KILL $PPID\nexit 0\n")
    script.chmod(0o755)
    _Receiver(host, tmp_path, token, port)
    res = _migrate(host, mutator, port, token, "--action-script", str(script))
    assert res.returncode == -signal.SIGKILL, res.stderr
    _copy_runs_inside(host, mutator)
    _original_held(mutator)


@pytest.mark.parametrize("point", ["migrate.final-sent", "migrate.restored"])
def test_source_killed_before_the_commit_runs_on(second_host: SecondHost, tmp_path: Path, mutator: _Mutator,
                                                 point: str) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    res = _migrate(host, mutator, port, token, hook=f"{point}:kill")
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert rx.result()["outcome"].startswith("failed"), rx.err.read_text()
    _nothing_inside(host)  # the copy it had built (and held) died with the link
    _original_runs(mutator, tracker_left=True)
    assert not _stores(rx.store)


@pytest.mark.parametrize("point", ["migrate.committed", "migrate.running"])
def test_source_killed_after_the_commit_leaves_the_copy_running(second_host: SecondHost, tmp_path: Path,
                                                                mutator: _Mutator, point: str) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    res = _migrate(host, mutator, port, token, hook=f"{point}:kill")
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert rx.result()["outcome"] == "running", rx.err.read_text()
    _copy_runs_inside(host, mutator)
    _original_held(mutator)
    _receiver_again(host, tmp_path, token, port)
    assert "the destination runs pid" in recover(mutator.pid, token).stdout
    _original_ended(mutator)
    _copy_runs_inside(host, mutator)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_source_signalled_after_its_hold_finishes_the_switch_over(second_host: SecondHost, tmp_path: Path,
                                                                  mutator: _Mutator, sig: int) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    env = _env(tmp_path, "migrate.held:stop")
    mig = subprocess.Popen(ckpt_argv("migrate", "-t", mutator.pid, "--to", f"{host.address}:{port}", "--token-file",
                                     token, "--max-downtime", "200"),
                           env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, close_fds=True)
    wait_until(lambda: _state(mig.pid) == "T", "ckpt migrate stops at migrate.held", timeout=120)
    mig.send_signal(sig)
    mig.send_signal(signal.SIGCONT)
    out, err = mig.communicate(timeout=60)
    assert mig.returncode == 0 and "Traceback" not in err, err
    assert rx.result()["outcome"] == "running"
    mutator.proc.wait(timeout=10)  # killed by its ckpt once the copy ran
    _copy_runs_inside(host, mutator)


def _receiver_with_hook(host: SecondHost, tmp_path: Path, token: Path, port: int, hook: str) -> subprocess.Popen:
    err = tmp_path / "receive.err"
    with open(err, "wb") as e:
        proc = host.run(ckpt_argv("receive", "--listen", f"{host.address}:{port}", "-D", tmp_path / "received",
                                  "--token-file", token, "--once"),
                        env={**os.environ, "CKPT_TEST_HOOK": hook}, stdout=subprocess.DEVNULL, stderr=e)
    wait_until(lambda: "listening on" in err.read_text() or proc.poll() is not None, "the receiver listens", timeout=20)
    assert proc.poll() is None, err.read_text()
    return proc


@pytest.mark.parametrize("point", ["receive.restoring", "restore-handing-over"])
def test_receiver_killed_before_the_commit_leaves_the_source_running(second_host: SecondHost, tmp_path: Path,
                                                                     mutator: _Mutator, point: str) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    _receiver_with_hook(host, tmp_path, token, port, f"{point}:kill")
    res = _migrate(host, mutator, port, token)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    _nothing_inside(host)
    _original_runs(mutator)
    left = _stores(tmp_path / "received")
    assert len(left) == 1  # the killed receiver's store: the next receiver removes it
    port = _free_port()
    rx = _Receiver(host, tmp_path, token, port)
    assert _migrate(host, mutator, port, token, "--dry-run").returncode == 0
    assert rx.result()["outcome"] == "dry run"
    assert not any(p.exists() for p in left) and "a receiver killed during that migration left it" in rx.err.read_text()


@pytest.mark.parametrize("point, copy_runs", [("receive.committed", False), ("receive.running", True)])
def test_receiver_killed_after_the_commit_is_in_doubt(second_host: SecondHost, tmp_path: Path, mutator: _Mutator,
                                                      point: str, copy_runs: bool) -> None:
    """The source cannot tell whether the copy was let go: it keeps the original stopped, and ``--recover``
    (a receiver started again on the directory) ends or resumes it as the destination's journal says."""
    host, port, token = second_host, _free_port(), _token(tmp_path)
    _receiver_with_hook(host, tmp_path, token, port, f"{point}:kill")
    res = _migrate(host, mutator, port, token)
    assert res.returncode == 1 and "in doubt" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert f"ckpt migrate --recover -t {mutator.pid}" in res.stderr
    _original_held(mutator)
    _receiver_again(host, tmp_path, token, port)
    out = recover(mutator.pid, token).stdout
    if copy_runs:
        assert "ended the original" in out, out
        _original_ended(mutator)
        _copy_runs_inside(host, mutator)
    else:
        assert "resumed the original" in out, out
        _nothing_inside(host)
        _original_runs(mutator)
