"""Migration in TLS 1.3 with certificates on both sides (``--tls``), ``receive --allow``, and the secret files' care.

All on 127.0.0.1.  The migration that succeeds needs a receiver in another PID
namespace (only there can the process keep its pid while the source still
exists): it runs in the second host's PID and mount namespaces, but in this
host's network, so both ends meet on loopback.  The refusals need no second
host: nothing gets as far as a restore.  Each failure must leave the source
running exactly as before, and say in one line why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import tracer_of, wait_until
from test_migrate import _free_port, _Mutator, _source_runs_on, _token
from test_migrate import mutator  # noqa: F401 - the fixture
from tlscerts import CA, Pair

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


class _LoopbackReceiver:
    """``ckpt receive`` on 127.0.0.1 (``host``: in the second host's PID and mount namespaces, not its network)."""

    def __init__(self, tmp_path: Path, token: Path, port: int, *extra: str, host: SecondHost | None = None,
                 once: bool = True) -> None:
        self.err = tmp_path / "receive.err"
        self.store = tmp_path / "received"
        argv = ckpt_argv("receive", "--listen", f"127.0.0.1:{port}", "-D", self.store, "--token-file", token,
                         *(["--once"] if once else []), *extra)
        if host is not None:
            argv = ["nsenter", "-t", str(host.init_pid), "-p", "-m", f"--wd={os.getcwd()}", *argv]
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         close_fds=True)
        wait_until(lambda: "listening on" in self.log() or self.proc.poll() is not None, "the receiver listens",
                   timeout=20)
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C (it waits on: the refused peers did not count for --once); its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=30)


def _migrate(pid: int, port: int, token: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ckpt_argv("migrate", "-t", pid, "--to", f"127.0.0.1:{port}", "--token-file", token, *extra),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)


def _one_line(res: subprocess.CompletedProcess[str], code: int, text: str) -> str:
    """The run failed with exit ``code`` and a one-line ``ckpt: …`` error containing ``text`` (a hint may follow)."""
    assert res.returncode == code, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("ckpt: ")]
    assert len(errors) == 1 and text in errors[0], res.stderr
    return errors[0]


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pair, Pair, CA]:
    """(the source's pair, the receiver's pair, their CA): certificates naming 127.0.0.1."""
    ca = CA(tmp_path)
    return ca.issue("source"), ca.issue("receiver"), ca


def test_a_migration_in_tls_with_certificates_on_both_sides(second_host: SecondHost, tmp_path: Path,
                                                            mutator: _Mutator, pki: tuple[Pair, Pair, CA]) -> None:
    source, receiver, _ = pki
    host, port, token, t = second_host, _free_port(), _token(tmp_path), mutator
    t.wait_for(r"GEN g=\d+")
    rx = _LoopbackReceiver(tmp_path, token, port, *receiver.flags(), host=host)
    res = _migrate(t.pid, port, token, *source.flags())
    assert res.returncode == 0, res.stderr + rx.log()
    assert rx.proc.wait(timeout=60) == 0, rx.log()
    assert f"migration from 127.0.0.1:" in rx.log() and ": running" in rx.log(), rx.log()
    t.proc.wait(timeout=10)  # the source was ended once the destination ran it
    assert t.proc.returncode == -signal.SIGKILL
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])  # its pid there is its old one
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)


def _refused(tmp_path: Path, t: _Mutator, receiver: list[str], source: list[str], says: str, logs: str) -> None:
    """A --once receiver refuses the source, which ``says`` why, runs on; the receiver ``logs`` why and waits on."""
    port, token = _free_port(), _token(tmp_path)
    rx = _LoopbackReceiver(tmp_path, token, port, *receiver)
    _one_line(_migrate(t.pid, port, token, *source), 1, says)
    _source_runs_on(t)
    wait_until(lambda: "refused a connection" in rx.log(), "the receiver logs the refusal", timeout=20)
    assert logs in rx.log(), rx.log()
    assert rx.proc.poll() is None  # a refused peer is no migration: even with --once it waits on
    assert rx.stop() == 130


def test_a_source_with_a_certificate_of_another_ca_is_refused(tmp_path: Path, mutator: _Mutator,
                                                              pki: tuple[Pair, Pair, CA]) -> None:
    _, receiver, _ = pki
    stranger = CA(tmp_path, "other").issue("source")
    mixed = Pair(stranger.cert, stranger.key, receiver.cacert)  # it trusts the receiver, the receiver not it
    _refused(tmp_path, mutator, receiver.flags(), mixed.flags(), "refused the TLS connection (alert: unknown ca)",
             "the TLS certificate of the source (peer 127.0.0.1:")


def test_a_source_without_tls_is_refused_by_a_tls_receiver(tmp_path: Path, mutator: _Mutator,
                                                           pki: tuple[Pair, Pair, CA]) -> None:
    _, receiver, _ = pki
    _refused(tmp_path, mutator, receiver.flags(), [], "takes only TLS connections", "did not start TLS")


def test_a_key_others_may_read_is_refused_before_anything_else(tmp_path: Path, mutator: _Mutator,
                                                               pki: tuple[Pair, Pair, CA]) -> None:
    source, receiver, _ = pki
    port, token, t = _free_port(), _token(tmp_path), mutator
    rx = _LoopbackReceiver(tmp_path, token, port, *receiver.flags())
    os.chmod(source.key, 0o644)
    res = _migrate(t.pid, port, token, *source.flags())
    _one_line(res, 2, "TLS private key (--tls-key) is accessible by group or others (mode 0644)")
    assert f"chmod 600 {source.key}" in res.stderr
    assert t.proc.poll() is None and tracer_of(t.pid) == 0  # never seized
    assert rx.stop() == 130
    assert "connection" not in rx.log(), rx.log()  # never connected
    # The receiver's own key: refused before it listens.
    os.chmod(receiver.key, 0o640)
    res = subprocess.run(ckpt_argv("receive", "--listen", f"127.0.0.1:{port}", "-D", tmp_path / "rx2",
                                   "--token-file", token, *receiver.flags()),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    _one_line(res, 2, "accessible by group or others (mode 0640)")
    assert "listening" not in res.stderr and not (tmp_path / "rx2").exists()


def test_tls_flags_without_tls_are_refused(tmp_path: Path, pki: tuple[Pair, Pair, CA]) -> None:
    source, _, _ = pki
    res = _migrate(os.getpid(), 9, _token(tmp_path), "--tls-cert", str(source.cert))
    _one_line(res, 2, "--tls-cert without --tls")


def test_receive_allow_closes_other_sources_at_accept(tmp_path: Path, mutator: _Mutator) -> None:
    port, token, t = _free_port(), _token(tmp_path), mutator
    rx = _LoopbackReceiver(tmp_path, token, port, "--allow", "127.0.0.2/32")
    res = _migrate(t.pid, port, token)
    line = _one_line(res, 1, f"127.0.0.1:{port}")
    assert re.search(r"connection (closed|reset) by", line), line
    assert "receive --allow" in res.stderr  # the hint names the likely cause
    _source_runs_on(t)
    wait_until(lambda: "refused a connection" in rx.log(), "the receiver logs the refusal", timeout=20)
    assert re.search(r"refused a connection from 127\.0\.0\.1:\d+: not an address of --allow 127\.0\.0\.2/32",
                     rx.log()), rx.log()
    assert rx.stop() == 130


@pytest.mark.parametrize("allow", ["10.0.0.0/33", "10.0.0.1/8", "localhost", "10.0.0.0/8,"])
def test_a_bad_allow_list_is_refused(tmp_path: Path, allow: str) -> None:
    res = subprocess.run(ckpt_argv("receive", "--listen", "127.0.0.1:0", "-D", tmp_path / "rx", "--allow", allow),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    _one_line(res, 2, "--allow")
    assert not (tmp_path / "rx").exists()


@pytest.mark.parametrize("command", ["migrate", "receive"])
def test_a_token_file_others_may_read_or_own_is_refused(tmp_path: Path, command: str) -> None:
    token = _token(tmp_path)
    argv = (["migrate", "-t", str(os.getpid()), "--to", "127.0.0.1:9"] if command == "migrate"
            else ["receive", "--listen", "127.0.0.1:0", "-D", str(tmp_path / "rx")])
    os.chmod(token, 0o644)
    res = subprocess.run(ckpt_argv(*argv, "--token-file", token), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    _one_line(res, 2, "token file is accessible by group or others (mode 0644)")
    os.chmod(token, 0o600)
    os.chown(token, 65534, 65534)
    res = subprocess.run(ckpt_argv(*argv, "--token-file", token), capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    _one_line(res, 2, "token file belongs to uid 65534")
    assert not (tmp_path / "rx").exists()
