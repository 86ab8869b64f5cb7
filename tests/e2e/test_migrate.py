"""Live migration between two "hosts" on this machine (tests/hosts.py: a network and PID namespace).

The receiver runs inside the second host (`ckpt receive`), the source is this
host (`ckpt migrate`, the real CLI): the migrated process takes its own pid
there while the source still exists, and must carry on with its state intact.
Targets write to files (a pipe to this test could not follow them to another
host).  Failures must leave the source running, untracked, and the receiver
without leftovers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpt.migrate.wire import save_token
from hosts import SecondHost, ckpt_argv
from targets import SCENARIOS, tracer_of, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Mutator:
    """py_mutator.py with its stdout in a file; lines are read from the file."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "mutator.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-u", str(SCENARIOS / "py_mutator.py")],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                         close_fds=True, start_new_session=True)
        self.pid = self.proc.pid
        self.wait_for(r"READY pid=")

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines()[after:]:
                m = re.search(pattern, line)
                if m:
                    return m
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} after line {after}: {self.lines()[-5:]}")

    def last_gen(self) -> int:
        gens = [int(m.group(1)) for line in self.lines() if (m := re.search(r"GEN g=(\d+)", line))]
        return gens[-1] if gens else 0

    def check(self, kill: callable = os.kill) -> re.Match[str]:  # type: ignore[valid-type]
        n = len(self.lines())
        kill(self.pid, signal.SIGUSR1)
        m = self.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
        assert m.group(1) == "PASS", m.group(0)
        return m

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class _Receiver:
    """`ckpt receive --once` (or without ``once``: until interrupted) inside the second host, on its address."""

    def __init__(self, host: SecondHost, tmp_path: Path, token: Path, port: int, *extra: str,
                 once: bool = True, ckpt: Callable[..., list[str]] = ckpt_argv) -> None:
        self.host = host
        self.stats = tmp_path / "receive.json"
        self.err = tmp_path / "receive.err"
        self.store = tmp_path / "received"
        with open(self.err, "wb") as err:
            self.proc = host.run(ckpt("receive", "--listen", f"{host.address}:{port}", "-D", self.store,
                                           "--token-file", token, *(["--once"] if once else []),
                                           "--json-stats", self.stats, *extra),
                                 stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: "listening on" in self.err.read_text() or self.proc.poll() is not None,
                   "the receiver listens", timeout=20)
        assert self.proc.poll() is None, self.err.read_text()

    def result(self, timeout: float = 60) -> dict:
        self.proc.wait(timeout=timeout)
        return json.loads(self.stats.read_text()) if self.stats.exists() else {}

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C to the receiver (inside the host: not its nsenter); its exit status."""
        for p in self.host.processes():
            if p != self.host.init_pid and b"receive" in Path(f"/proc/{p}/cmdline").read_bytes():
                os.kill(p, signal.SIGINT)
        return self.proc.wait(timeout=timeout)


def _migrate(host: SecondHost, pid: int, port: int, token: Path, tmp_path: Path, *extra: str,
             timeout: float = 120, ckpt: Callable[..., list[str]] = ckpt_argv
             ) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``ckpt migrate`` (``ckpt``: the argv of the ckpt to run) of ``pid`` to the receiver at ``port``: (result, stats)."""
    stats = tmp_path / "migrate.json"
    res = subprocess.run(ckpt("migrate", "-t", pid, "--to", f"{host.address}:{port}", "--token-file", token,
                                   "--json-stats", stats, "-v", *extra),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=timeout)
    return res, (json.loads(stats.read_text()) if res.returncode == 0 and stats.exists() else {})


def _stores(root: Path) -> list[Path]:
    """The migrations' stores a receiver keeps in ``root`` (not its journal, ``.journal``)."""
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def _untracked(pid: int) -> bool:
    """No userfaultfd left in the process (ckpt's tracker was removed)."""
    return not [f for f in os.listdir(f"/proc/{pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{pid}/fd/{f}")]


def _slow_migration(host: SecondHost, pid: int, port: int, token: Path, *extra: str,
                    rate_mb_s: str = "2") -> subprocess.Popen[str]:
    """A migration whose rounds crawl (a bandwidth limit, an unreachable downtime budget): to break it mid-way."""
    return subprocess.Popen(ckpt_argv("migrate", "-t", pid, "--to", f"{host.address}:{port}", "--token-file", token,
                                      "--bandwidth-limit", rate_mb_s, "--max-downtime", "1", "-v", *extra),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            close_fds=True)


def _wait_first_image(rx: "_Receiver") -> None:
    wait_until(lambda: rx.store.exists() and _stores(rx.store), "the first image arrives",
               timeout=30)


def _source_runs_on(t: _Mutator) -> None:
    """After a failed or dry migration: the source runs, untraced, untracked, its state intact."""
    assert t.proc.poll() is None and tracer_of(t.pid) == 0 and _untracked(t.pid)
    t.check()


@pytest.fixture
def mutator(tmp_path: Path):  # noqa: ANN201
    """py_mutator.py, killed at the end whatever happened (a migrated copy lives in the second host)."""
    t = _Mutator(tmp_path)
    yield t
    t.close()


def _token(tmp_path: Path, name: str = "token") -> Path:
    path = tmp_path / name
    save_token(path)
    return path


@pytest.mark.parametrize("track", ["uffd-wp", "hash"])
def test_migrate_python_target(second_host: SecondHost, tmp_path: Path, mutator: _Mutator, track: str) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    t.wait_for(r"GEN g=\d+")
    t.check()
    rx = _Receiver(host, tmp_path, token, port)
    res, stats = _migrate(host, t.pid, port, token, tmp_path, "--track", track, "--max-downtime", "200")
    assert res.returncode == 0, res.stderr
    result = rx.result()
    assert result["outcome"] == "running" and result["source_pid"] == t.pid, result
    # The source is gone (ended after the destination confirmed); the copy runs there under its pid.
    t.proc.wait(timeout=10)
    assert t.proc.returncode == -signal.SIGKILL
    inside = {v: k for k, v in host.processes().items()}
    assert t.pid in inside, host.processes()
    gen = t.last_gen()
    t.wait_for(rf"GEN g=(?!{gen}\b)\d+", after=len(t.lines()) - 1)  # it carries on
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])  # its pid there is its old one
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)
    assert stats["iterations"] >= 2 and stats["downtime_ms"] > 0 and stats["bytes_sent"] > 0, stats
    assert stats["rounds"][0]["pages"] > stats["rounds"][-1]["pages"], stats["rounds"]
    print(f"migrated [{track}]: downtime {stats['downtime_ms']} ms (predicted {stats['predicted_downtime_ms']}), "
          f"{stats['iterations']} rounds, {stats['bytes_sent'] / 1e6:.1f} MB, total {stats['total_ms']} ms, "
          f"final {stats['final_pages']} pages {stats['final_bytes']} B, restore {stats['restore_ms']} ms")


def test_wrong_token_is_refused_and_the_source_runs_on(second_host: SecondHost, tmp_path: Path,
                                                       mutator: _Mutator) -> None:
    host, port = second_host, _free_port()
    t = mutator
    rx = _Receiver(host, tmp_path, _token(tmp_path, "theirs"), port)
    res, _ = _migrate(host, t.pid, port, _token(tmp_path, "ours"), tmp_path)
    assert res.returncode != 0 and "authentication" in res.stderr and "Traceback" not in res.stderr, res.stderr
    _source_runs_on(t)
    # A peer that failed the handshake is no migration: even with --once the receiver waits on.
    assert rx.proc.poll() is None and "failed authentication" in rx.err.read_text()
    assert not list(rx.store.iterdir()) or all(p.suffix == ".token" for p in rx.store.iterdir())
    assert rx.interrupt() == 130


def test_receiver_killed_mid_migration_leaves_the_source_running(second_host: SecondHost, tmp_path: Path,
                                                                 mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    rx = _Receiver(host, tmp_path, token, port)
    mig = _slow_migration(host, t.pid, port, token)  # the receiver dies in the middle of its rounds
    _wait_first_image(rx)
    for host_pid, inside in host.processes().items():
        if host_pid != host.init_pid:
            os.kill(host_pid, signal.SIGKILL)  # the receiver (and its nsenter)
    out, err = mig.communicate(timeout=60)
    assert mig.returncode not in (0, None) and "Traceback" not in err, err
    _source_runs_on(t)


def test_failed_restore_at_the_destination_thaws_the_source(tmp_path: Path, mutator: _Mutator) -> None:
    """A receiver in *this* pid namespace cannot restore the pid the source still holds."""
    port, token = _free_port(), _token(tmp_path)
    t = mutator
    err = tmp_path / "rx.err"
    with open(err, "wb") as e:
        rx = subprocess.Popen(ckpt_argv("receive", "--listen", f"127.0.0.1:{port}", "-D", tmp_path / "rx",
                                        "--token-file", token, "--once"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e, close_fds=True)
    wait_until(lambda: "listening on" in err.read_text(), "the receiver listens", timeout=20)
    res = subprocess.run(ckpt_argv("migrate", "-t", t.pid, "--to", f"127.0.0.1:{port}", "--token-file", token),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)
    assert res.returncode != 0 and "restore failed at the destination" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert rx.wait(timeout=30) != 0
    _source_runs_on(t)  # thawed, with its state intact
    assert not _stores(tmp_path / "rx")  # the receiver cleaned up


def test_dry_run_predicts_and_switches_nothing(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    rx = _Receiver(host, tmp_path, token, port)
    res, stats = _migrate(host, t.pid, port, token, tmp_path, "--dry-run")
    assert res.returncode == 0 and "predicted downtime" in res.stdout, res.stderr
    assert rx.result()["outcome"] == "dry run"
    assert not stats["switched"] and stats["iterations"] >= 2 and stats["predicted_downtime_ms"] > 0
    _source_runs_on(t)


def test_stop_and_copy(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    rx = _Receiver(host, tmp_path, token, port)
    res, stats = _migrate(host, t.pid, port, token, tmp_path, "--stop-and-copy")
    assert res.returncode == 0, res.stderr
    assert rx.result()["outcome"] == "running"
    assert stats["iterations"] == 0 and stats["reason"] == "stop-and-copy" and stats["switched"]
    t.proc.wait(timeout=10)
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])
    assert t.wait_for(r"CHECK (PASS|FAIL)", after=n).group(1) == "PASS"


def test_ctrl_c_during_the_rounds(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    rx = _Receiver(host, tmp_path, token, port)
    mig = _slow_migration(host, t.pid, port, token)
    _wait_first_image(rx)
    mig.send_signal(signal.SIGINT)
    out, err = mig.communicate(timeout=60)
    assert mig.returncode != 0 and "interrupted" in err and "Traceback" not in err, err
    result = rx.result()
    assert result["outcome"] != "running", result
    assert not _stores(rx.store)  # the receiver removed what it stored
    _source_runs_on(t)


def test_silent_destination_times_out_and_the_source_runs_on(second_host: SecondHost, tmp_path: Path,
                                                             mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = mutator
    stopped: list[int] = []
    try:
        rx = _Receiver(host, tmp_path, token, port)
        mig = _slow_migration(host, t.pid, port, token, "--timeout", "2", rate_mb_s="20")
        _wait_first_image(rx)
        # The receiver hangs (not the process it is building, which it holds under ptrace).
        stopped = [p for p in host.processes() if b"receive" in Path(f"/proc/{p}/cmdline").read_bytes()]
        for p in stopped:
            os.kill(p, signal.SIGSTOP)
        out, err = mig.communicate(timeout=60)
        assert mig.returncode != 0 and re.search(r"within 2 s|timed out", err) and "Traceback" not in err, err
        _source_runs_on(t)
    finally:
        for p in stopped:  # (its nsenter, stopped with it, is ended by the host's close)
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
