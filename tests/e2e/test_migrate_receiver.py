"""`ckpt receive` under hostile or broken connections: strangers cannot block or end it.

Connections that have not proven they know the token are handled side by side,
each with a short handshake deadline, at most ``MAX_PENDING`` of them (one more
closes the oldest of the busiest address); one authenticated migration runs at a time, and ``--once``
counts only those.  The migrations here are real (a Python target moved to the
second host, as in test_migrate.py: only there can it keep its pid while the
source still exists); the junk comes from this host to the receiver's address.
A bad ``--listen`` is refused before any file is written.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from ckpt.migrate.dest import MAX_PENDING
from hosts import SecondHost, ckpt_argv
from test_migrate import _free_port, _migrate, _Mutator, _Receiver, _slow_migration, _token, _wait_first_image
from test_migrate import mutator  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


def _junk(address: str, port: int, first: bytes = b"") -> socket.socket:
    """A connection to the receiver that sends ``first`` (maybe nothing) and then idles.

    Connected without blocking: a receiver whose backlog is full would
    otherwise hold the test in connect() (the kernel drops the SYNs).
    """
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((address, port))
    if first:
        select.select([], [s], [], 30)
        s.sendall(first)
    return s


def _closed_by_peer(s: socket.socket, timeout: float = 60) -> bool:
    """Read (the receiver's hello, its refusal) until the receiver closes ``s``; False if it did not in time."""
    deadline = time.monotonic() + timeout  # a hang guard, not a measurement
    while time.monotonic() < deadline:
        if select.select([s], [], [], 0.5)[0]:
            try:
                if not s.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except BlockingIOError:
                pass
    return False


def _runs_there(t: _Mutator, host: SecondHost) -> None:
    """The source was ended, and its copy runs in the second host (at its old pid) and checks itself."""
    t.proc.wait(timeout=10)
    n = len(t.lines())
    host.check_output(["kill", "-USR1", str(t.pid)])
    m = t.wait_for(r"CHECK (PASS|FAIL)(.*)", after=n)
    assert m.group(1) == "PASS", m.group(0)


def _migrated(t: _Mutator, host: SecondHost, rx: _Receiver, res: subprocess.CompletedProcess[str]) -> None:
    """The migration succeeded: the receiver ran it and ended (``--once``), the copy runs there."""
    assert res.returncode == 0, res.stderr
    result = rx.result()
    assert rx.proc.returncode == 0 and result["outcome"] == "running" and result["source_pid"] == t.pid, result
    _runs_there(t, host)


def test_half_a_frame_does_not_block_a_migration(second_host: SecondHost, tmp_path: Path, mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    # A frame header announcing 100 bytes, and 10 of them: the receiver waits for the rest.
    half = _junk(host.address, port, struct.pack(">I", 100) + b"\x81\xa4type\xa5hello")
    with half:
        res, _ = _migrate(host, mutator.pid, port, token, tmp_path)
        _migrated(mutator, host, rx, res)
        assert half.fileno() >= 0  # still open on our side all along


def test_many_idle_connections_do_not_block_a_migration(second_host: SecondHost, tmp_path: Path,
                                                        mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    idle = [_junk(host.address, port) for _ in range(MAX_PENDING + 16)]  # beyond the cap: the oldest are closed
    try:
        # The receiver took them all: the oldest are closed (by the cap, or their handshake deadline).
        assert _closed_by_peer(idle[0]), "the oldest idle connection was never closed"
        res, _ = _migrate(host, mutator.pid, port, token, tmp_path)
        _migrated(mutator, host, rx, res)
    finally:
        for s in idle:
            s.close()


def test_once_outlives_a_stranger_and_ends_after_a_migration(second_host: SecondHost, tmp_path: Path,
                                                             mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port)
    with _junk(host.address, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") as http:
        assert _closed_by_peer(http), "the receiver kept an HTTP client"
    assert rx.proc.poll() is None, rx.err.read_text()  # the stranger did not count as the one migration
    assert "did not answer with a ckpt handshake" in rx.err.read_text()
    res, _ = _migrate(host, mutator.pid, port, token, tmp_path)
    _migrated(mutator, host, rx, res)


def test_a_second_source_is_refused_while_a_migration_runs(second_host: SecondHost, tmp_path: Path,
                                                           mutator: _Mutator) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    rx = _Receiver(host, tmp_path, token, port, once=False)  # (--once would stop listening once the first starts)
    first = _slow_migration(host, mutator.pid, port, token)
    other = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, close_fds=True)
    try:
        _wait_first_image(rx)
        with _junk(host.address, port, b"junk meanwhile\r\n") as junk:  # does not disturb the first either
            second = subprocess.run(ckpt_argv("migrate", "-t", other.pid, "--to", f"{host.address}:{port}",
                                              "--token-file", token),
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            assert _closed_by_peer(junk)
        assert second.returncode == 1 and "another migration is in progress" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and other.poll() is None
        out, err = first.communicate(timeout=300)  # the first carries on, undisturbed, to its end
        assert first.returncode == 0, err
        _runs_there(mutator, host)
        assert rx.interrupt() == 130  # (not --once: it serves until interrupted)
    finally:
        other.kill()
        other.wait()
        if first.poll() is None:
            first.kill()
            first.communicate()


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "nonsense", "127.0.0.1:", "[::1]:7x", "192.0.2.1:5000",
                                    "busy"])
def test_bad_listen_exits_2_before_writing_anything(tmp_path: Path, listen: str) -> None:
    """192.0.2.1 (TEST-NET-1) is no address of this host; "busy": a port another socket listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        if listen == "busy":
            listen = f"127.0.0.1:{other.getsockname()[1]}"
        res = subprocess.run(ckpt_argv("receive", "--listen", listen, "-D", tmp_path / "rx", "--once"),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    errors = [line for line in res.stderr.splitlines() if not line.startswith("hint: ")]
    assert res.returncode == 2 and len(errors) == 1 and errors[0].startswith("ckpt: "), res.stderr
    assert listen in errors[0] or listen.split(":")[-1] in errors[0], errors
    assert not (tmp_path / "rx").exists()  # no token file, no directory


def test_bad_to_exits_2(tmp_path: Path) -> None:
    res = subprocess.run(ckpt_argv("migrate", "-t", os.getpid(), "--to", "127.0.0.1:70000", "--token-file",
                                   _token(tmp_path)),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "70000" in res.stderr, res.stderr
