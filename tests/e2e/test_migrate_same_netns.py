"""Migration to a receiver in the source's own network namespace (a restart on the same host).

The receiver runs in a PID namespace of its own (so the copy takes the
original's pid while the original exists) but in this host's network
namespace: the addresses and ports the process is bound to are still held by
the original while the copy is built, so the copy gets the very sockets
(ckpt/migrate/handover.py) instead of binding them again — which failed with
"Address already in use" before.  A client that connects all through the
migration is answered every time, in order, by one counter: connections that
came while the process was frozen waited in the listener and are answered by
the copy.  A migration that fails before its commit leaves the original
serving on its sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import SCENARIOS, wait_until
from test_migrate import _free_port, _Receiver, _token
from test_sockets import REDIS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")

GUARD = 60.0  # seconds: a hang guard, never a measurement


@pytest.fixture
def same_host() -> Iterator[SecondHost]:
    """A PID namespace of its own in this network namespace."""
    with SecondHost(same_network=True) as host:
        yield host


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """scenarios/py_counter_server.py on a TCP and a UDP port of 127.0.0.1."""

    def __init__(self, tmp_path: Path) -> None:
        self.tcp, self.udp = _free_port(), _free_udp_port()
        self.log = tmp_path / "server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-u", str(SCENARIOS / "py_counter_server.py"),
                                          str(self.tcp), str(self.udp)], stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
        wait_until(lambda: "READY" in self.log.read_text() or self.proc.poll() is not None, "the server is ready",
                   timeout=GUARD)
        assert self.proc.poll() is None, self.log.read_text()
        self.pid = self.proc.pid

    def ask_tcp(self) -> tuple[int, int]:
        with socket.create_connection(("127.0.0.1", self.tcp), timeout=GUARD) as c:
            n, pid = c.makefile().readline().split()
        return int(n), int(pid)

    def ask_udp(self) -> tuple[int, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(GUARD)
            c.sendto(b"?", ("127.0.0.1", self.udp))
            n, pid = c.recv(64).split()
        return int(n), int(pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class _Client(threading.Thread):
    """Asks the server over TCP again and again until stopped; every answer, or the first failure."""

    def __init__(self, server: _Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.answers: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.answers.append(self.server.ask_tcp())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    s = _Server(tmp_path)
    yield s
    s.close()


def _migrate(host: SecondHost, pid: int, port: int, token: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(ckpt_argv("migrate", "-t", pid, "--to", f"{host.address}:{port}", "--token-file", token,
                                    "--max-downtime", "300", *extra),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)


def test_bound_sockets_move_with_the_connections_waiting_in_them(same_host: SecondHost, tmp_path: Path,
                                                                server: _Server) -> None:
    host, port, token = same_host, _free_port(), _token(tmp_path)
    assert server.ask_tcp() == (1, server.pid) and server.ask_udp() == (2, server.pid)
    rx = _Receiver(host, tmp_path, token, port)
    client = _Client(server)
    client.start()
    wait_until(lambda: len(client.answers) >= 3 or client.error is not None, "the client is served", timeout=GUARD)
    res = _migrate(host, server.pid, port, token)
    assert res.returncode == 0, res.stderr
    assert rx.result()["outcome"] == "running", rx.err.read_text()
    server.proc.wait(timeout=GUARD)  # the original is ended ...
    n = len(client.answers)
    wait_until(lambda: len(client.answers) >= n + 3 or client.error is not None, "the copy serves", timeout=GUARD)
    client.stop.set()
    client.join(GUARD)
    assert client.error is None, f"{client.error!r} after {len(client.answers)} answers"
    # ... and every connection was answered once, in order, by one counter going on in the copy
    counts = [a for a, _ in client.answers]
    assert counts == list(range(3, 3 + len(counts))), counts
    assert client.answers[-1][1] == server.pid  # the copy has the original's pid, in its namespace
    assert server.pid in host.processes().values()
    n_tcp, _ = server.ask_tcp()
    assert server.ask_udp() == (n_tcp + 1, server.pid)  # the UDP socket came over too


def test_a_migration_failing_before_the_commit_leaves_the_sockets_serving(same_host: SecondHost, tmp_path: Path,
                                                                         server: _Server) -> None:
    host, port, token = same_host, _free_port(), _token(tmp_path)
    err = tmp_path / "receive.err"
    with open(err, "wb") as e:
        host.run(ckpt_argv("receive", "--listen", f"{host.address}:{port}", "-D", tmp_path / "received",
                           "--token-file", token, "--once"),
                 env={**os.environ, "CKPT_TEST_HOOK": "restore-handing-over:kill"}, stdout=subprocess.DEVNULL,
                 stderr=e)
    wait_until(lambda: "listening on" in err.read_text(), "the receiver listens", timeout=20)
    res = _migrate(host, server.pid, port, token)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    wait_until(lambda: server.pid not in host.processes().values(), "the copy died with its receiver")
    assert server.proc.poll() is None
    assert server.ask_tcp() == (1, server.pid) and server.ask_udp() == (2, server.pid)


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_redis_restarted_on_the_same_host(same_host: SecondHost, tmp_path: Path) -> None:
    """The issue's case: redis migrated to a receiver in its own network namespace failed every time."""
    from test_migrate_targets import _RedisAt, _start_redis, _stop

    host, port, rx_port, token = same_host, _free_port(), _free_port(), _token(tmp_path)
    proc = _start_redis(tmp_path, port)
    try:
        deadline = time.monotonic() + GUARD
        while True:
            try:
                r = _RedisAt("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis does not listen"
                time.sleep(0.05)
        for i in range(1000):
            assert r.call("SET", f"k{i}", f"v{i}") == "OK"
        r.close()
        rx = _Receiver(host, tmp_path, token, rx_port)
        res = _migrate(host, proc.pid, rx_port, token)
        assert res.returncode == 0, res.stderr
        assert rx.result()["outcome"] == "running", rx.err.read_text()
        proc.wait(timeout=GUARD)
        assert proc.returncode == -signal.SIGKILL
        assert proc.pid in host.processes().values()
        r = _RedisAt("127.0.0.1", port)
        assert r.call("DBSIZE") == 1000 and r.call("GET", "k999") == b"v999"
        assert r.call("SET", "after", "restart") == "OK" and r.call("GET", "after") == b"restart"
        r.close()
    finally:
        _stop(proc)
