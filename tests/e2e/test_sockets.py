"""Listening sockets (with their backlogs), epoll and eventfd through dump and restore; an established connection;
redis-server."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import Unsupported
from ckpt.image.show import show_dict
from ckpt.kernel.sock_diag import listen_backlogs
from ckpt.resources import sockets
from targets import python_argv, spawn, tracer_of, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _ask(family: int, addr: object, kind: int = socket.SOCK_STREAM, msg: bytes = b"ping") -> str:
    with socket.socket(family, kind) as c:
        c.settimeout(5)
        if kind == socket.SOCK_DGRAM:
            c.sendto(msg, addr)
            return c.recv(100).decode()
        c.connect(addr)
        c.sendall(msg)
        return c.recv(100).decode().strip()


def _backlogs(pid: int) -> dict[str, list[int]]:
    """Listen backlog of each listening socket ``pid`` holds, by family, as sock_diag reports it."""
    inodes = {int(link[8:-1]) for link in (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
              if link.startswith("socket:[")}
    out = {}
    for name, family, proto in (("tcp4", socket.AF_INET, socket.IPPROTO_TCP),
                                ("tcp6", socket.AF_INET6, socket.IPPROTO_TCP), ("unix", socket.AF_UNIX, 0)):
        found = sorted(b for ino, b in listen_backlogs(family, proto).items() if ino in inodes)
        if found:
            out[name] = found
    return out


def _ss_send_q() -> dict[str, int]:
    """``ss -ltnx``'s Send-Q (a listener's backlog) by local address: "127.0.0.1:P", "[::1]:P", a unix path."""
    lines = subprocess.run(["ss", "-Hltnx"], capture_output=True, text=True, check=True).stdout.splitlines()
    return {f[4]: int(f[3]) for f in map(str.split, lines)}


def _image_backlogs(image: Path) -> list[int]:
    """Every ``backlog`` field the image's file records hold (absent when not recorded)."""
    found: list[int] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            found.extend(x for k, x in v.items() if k == "backlog")
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(show_dict(image))
    return sorted(found)


def _all_answer(ports: dict[str, str], unix_path: str) -> list[int]:
    out = [_ask(socket.AF_INET, ("127.0.0.1", int(ports["tcp4"]))),
           _ask(socket.AF_INET6, ("::1", int(ports["tcp6"]))),
           _ask(socket.AF_UNIX, unix_path),
           _ask(socket.AF_INET, ("127.0.0.1", int(ports["udp"])), socket.SOCK_DGRAM).split()[0] + " "
           + _ask(socket.AF_INET, ("127.0.0.1", int(ports["udp"])), socket.SOCK_DGRAM).split()[1]]
    assert all(a.startswith("pong ") for a in out), out
    return [int(a.split()[1]) for a in out]


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
def test_listeners_epoll_eventfd_round_trip(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                            leave_running: bool) -> None:
    unix_path = str(tmp_path / "srv.sock")
    t = py_target("py_server.py", unix_path, stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    counts = _all_answer(ports, unix_path)
    assert _backlogs(t.pid) == {"tcp4": [17], "tcp6": [5], "unix": [3]}  # py_server's listen() calls
    if leave_running:
        dump(t.pid, tmp_path / "img1", leave_running=True)
        assert tracer_of(t.pid) == 0 and _all_answer(ports, unix_path)[0] > counts[-1]
        dump(t.pid, tmp_path / "img", leave_running=True)
        os.kill(t.pid, signal.SIGKILL)
        t.proc.wait(timeout=10)
    else:
        dump(t.pid, tmp_path / "img")
        t.proc.returncode = -signal.SIGKILL
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    after = _all_answer(ports, unix_path)  # every listener accepts again, from the same epoll loop
    assert _backlogs(r.pid) == {"tcp4": [17], "tcp6": [5], "unix": [3]}  # not SOMAXCONN
    assert after[0] > counts[-1] and after == sorted(after)
    efd = _ask(socket.AF_INET, ("127.0.0.1", int(ports["udp"])), socket.SOCK_DGRAM, b"efd")
    assert efd.endswith("efd=3"), efd  # the eventfd counter came back


def test_established_tcp_needs_tcp_close(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    unix_path = str(tmp_path / "srv.sock")
    t = py_target("py_server.py", unix_path, stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    client = socket.create_connection(("127.0.0.1", int(ports["tcp4"])), timeout=5)
    client.sendall(b"hold")
    assert client.recv(10) == b"held\n"
    with pytest.raises(Unsupported, match=r"fd \d+ is an established IPv4 TCP connection") as exc:
        dump(t.pid, tmp_path / "img")
    assert "--tcp-close" in (exc.value.hint or "")
    assert t.alive() and tracer_of(t.pid) == 0 and not (tmp_path / "img").exists()
    dump(t.pid, tmp_path / "img", tcp_close=True)
    t.proc.returncode = -signal.SIGKILL
    assert client.recv(10) == b""  # the dump ended the process: our side sees the connection closed
    client.close()
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _ask(socket.AF_INET, ("127.0.0.1", int(ports["tcp4"]))).startswith("pong ")


# --- listen backlogs ---------------------------------------------------------

SOMAXCONN_NOW = min(socket.SOMAXCONN, int(Path("/proc/sys/net/core/somaxconn").read_text()))


def _pongs(ports: dict[str, str], unix_name: str) -> None:
    addrs = [(socket.AF_INET, ("127.0.0.1", int(ports["tcp4"]))), (socket.AF_INET6, ("::1", int(ports["tcp6"]))),
             (socket.AF_UNIX, unix_name)]
    assert all(_ask(f, a).startswith("pong ") for f, a in addrs)


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
@pytest.mark.parametrize("b4, b6, bu", [(5, 17, 33), (0, 1 << 20, 1)], ids=["5-17-33", "0-huge-1"])
def test_listen_backlogs_come_back(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                   b4: int, b6: int, bu: int) -> None:
    unix_path = str(tmp_path / "b.sock")
    t = py_target("py_backlogs.py", unix_path, str(b4), str(b6), str(bu), stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    _pongs(ports, unix_path)
    want = {f"127.0.0.1:{ports['tcp4']}": b4, f"[::1]:{ports['tcp6']}": min(b6, SOMAXCONN_NOW), unix_path: bu}
    assert {k: v for k, v in _ss_send_q().items() if k in want} == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sock_diag answered for every listener: no note
        dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    assert _image_backlogs(tmp_path / "img") == sorted(want.values())  # a backlog of 0 is recorded too
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert {k: v for k, v in _ss_send_q().items() if k in want} == want
    assert _backlogs(r.pid) == {"tcp4": [b4], "tcp6": [min(b6, SOMAXCONN_NOW)], "unix": [bu]}
    _pongs(ports, unix_path)  # and every listener still accepts


def test_unknown_unix_backlog_is_refused_or_tolerated(py_target, tmp_path: Path,  # noqa: ANN001
                                                      restored: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sock_diag a unix listener's backlog is not known: refused unless --tolerate unix-diag, which
    restores it as SOMAXCONN with a note.  TCP listeners tell theirs through TCP_INFO: kept either way."""
    unix_path = str(tmp_path / "b.sock")
    t = py_target("py_backlogs.py", unix_path, "5", "17", "33", stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))

    def no_sock_diag(family: int, protocol: int = 0, **_kw: int) -> dict[int, int]:
        raise FileNotFoundError(2, "sock_diag: No such file or directory")  # as without the diag modules

    monkeypatch.setattr(sockets, "listen_backlogs", no_sock_diag)
    with pytest.raises(Unsupported, match="a unix listener whose backlog is not known") as refused:
        dump(t.pid, tmp_path / "img")
    assert "--tolerate unix-diag" in (refused.value.hint or "") and t.alive()
    stats = dump(t.pid, tmp_path / "img", tolerate=["unix-diag"])
    t.proc.returncode = -signal.SIGKILL
    lost = [n for n in stats.notes if "backlog is not known (sock_diag failed" in n]
    assert len(lost) == 1 and re.search(r"fd \d+", lost[0]), stats.notes
    tcp6 = [min(17, SOMAXCONN_NOW)] if ports["tcp6"] != "0" else []
    assert sorted(_image_backlogs(tmp_path / "img")) == sorted([5, *tcp6])  # the unix one is not recorded
    monkeypatch.undo()
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert _backlogs(r.pid) == {"tcp4": [5], **({"tcp6": tcp6} if tcp6 else {}), "unix": [SOMAXCONN_NOW]}
    _pongs(ports, unix_path)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_backlog_in_another_network_namespace(tmp_path: Path) -> None:
    """sock_diag sees the dumper's network namespace only: a unix listener in another one is refused unless
    tolerated; a TCP listener's backlog comes from TCP_INFO, in any namespace."""
    with spawn(["unshare", "--net", *python_argv("py_backlogs.py", "@ckpt-netns-backlog", "5", "17", "33", "0.0.0.0")],
               stderr=subprocess.DEVNULL) as t:
        t.expect("READY", timeout=20)
        with pytest.raises(Unsupported, match="in another network namespace"):
            dump(t.pid, tmp_path / "img", leave_running=True)
        stats = dump(t.pid, tmp_path / "img", leave_running=True, tolerate=["unix-diag"])
        note = "the process is in another network namespace, which sock_diag does not see"
        assert [n.split(": ", 2)[2].split(" (")[0] for n in stats.notes if note in n] == [
            "a unix listener whose backlog is not known",
            "a unix listener whose connections waiting to be accepted are not known"], stats.notes
        assert t.alive() and _image_backlogs(tmp_path / "img") == [5]  # tcp4 (no ::1 there)


def test_waiting_connections_and_queued_datagrams_are_refused_or_tolerated(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """A TCP listener with a connection not yet accepted, a UDP socket with a datagram not yet read: neither
    can be put back, so the dump is refused naming each and the tolerance that lets it through; with it,
    each loss is a note — and the dump itself consumed nothing (the target still accepts and reads them)."""
    t = py_target("py_queues.py", stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    client = socket.create_connection(("127.0.0.1", int(ports["tcp"])))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(Unsupported, match=r"TCP listener on 127\.0\.0\.1:\d+ .*with 1 connection\(s\) waiting to "
                                              r"be accepted") as refused:
            dump(t.pid, tmp_path / "img", leave_running=True)
        assert "--tolerate listen-queue" in (refused.value.hint or "")
        udp.sendto(b"hello", ("127.0.0.1", int(ports["udp"])))
        with pytest.raises(Unsupported, match="UDP socket with datagrams not yet read") as refused:
            dump(t.pid, tmp_path / "img", leave_running=True, tolerate=["listen-queue"])
        assert "--tolerate udp-queue" in (refused.value.hint or "")
        assert t.alive() and not (tmp_path / "img").exists()
        stats = dump(t.pid, tmp_path / "img", leave_running=True, tolerate=["listen-queue", "udp-queue"])
        assert [n.split(": ", 2)[-1] for n in stats.notes if "--tolerate" in n] == [
            f"an IPv4 TCP listener on 127.0.0.1:{ports['tcp']} with 1 connection(s) waiting to be accepted: "
            "not kept (--tolerate listen-queue)",
            "an IPv4 UDP socket with datagrams not yet read: not kept (--tolerate udp-queue)"], stats.notes
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("QUEUES", timeout=20) == "QUEUES accepted=1 datagrams=hello"
    finally:
        client.close()
        udp.close()


# --- redis -------------------------------------------------------------------

REDIS = shutil.which("redis-server")
NKEYS = 100_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A minimal RESP client on one connection: pipelined commands, one reply each.

    ``address``/``source``: where redis listens and the local address to connect from (a
    second host's tests); ``timeout``: of each socket operation.
    """

    def __init__(self, port: int, address: str = "127.0.0.1", source: str | None = None,
                 timeout: float = 10) -> None:
        self.sock = socket.create_connection((address, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    @classmethod
    def when_up(cls, port: int, address: str = "127.0.0.1", source: str | None = None,
                timeout: float = 10) -> "Redis":
        """Connect once redis listens (it was just started): within 10 s."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return cls(port, address, source, timeout)
            except OSError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)

    def close(self) -> None:
        self.sock.close()

    @staticmethod
    def encode(*args: str | bytes) -> bytes:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(parts)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "redis closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> object:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-"):
            return rest.decode()
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(1 << 16)
                assert chunk, "redis closed the connection"
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        raise AssertionError(f"unexpected reply {line!r}")

    def pipeline(self, commands: list[bytes]) -> list[object]:
        self.sock.sendall(b"".join(commands))
        return [self.reply() for _ in commands]

    def call(self, *args: str | bytes) -> object:
        return self.pipeline([self.encode(*args)])[0]


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_redis_keeps_its_keys_and_serves_after_restore(tmp_path: Path, restored: list[int]) -> None:
    port = _free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {tmp_path}\n"
                    "logfile \"\"\nprotected-mode no\n")
    with spawn([REDIS, str(conf)], stderr=subprocess.DEVNULL) as t:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = Redis(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.05)
        for start in range(0, NKEYS, 10_000):
            replies = r.pipeline([Redis.encode("SET", f"key:{i}", f"value-{i}-{i * 7919 % 1000003}")
                                  for i in range(start, start + 10_000)])
            assert replies == ["OK"] * 10_000
        assert r.call("DBSIZE") == NKEYS
        r.close()
        def one_socket() -> bool:
            """Only the listener is left (an fd closing while we look counts as not yet)."""
            try:
                links = {int(f): os.readlink(f"/proc/{t.pid}/fd/{f}") for f in os.listdir(f"/proc/{t.pid}/fd")}
            except FileNotFoundError:
                return False
            return sum(link.startswith("socket:") for link in links.values()) == 1
        wait_until(one_socket, "redis closed our client connection")

        assert _backlogs(t.pid) == {"tcp4": [min(511, SOMAXCONN_NOW)]}  # redis's default tcp-backlog
        stats = dump(t.pid, tmp_path / "img")
        t.proc.returncode = -signal.SIGKILL
        res = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(res.pid)
        assert res.pid == t.pid and tracer_of(t.pid) == 0
        assert _backlogs(res.pid) == {"tcp4": [min(511, SOMAXCONN_NOW)]}
        r = Redis(port)
        assert r.call("DBSIZE") == NKEYS
        for i in random.Random(7).sample(range(NKEYS), 200):
            assert r.call("GET", f"key:{i}") == f"value-{i}-{i * 7919 % 1000003}".encode()
        assert r.call("SET", "after", "restore") == "OK" and r.call("GET", "after") == b"restore"
        r2 = Redis(port)  # a second client at the same time: the epoll loop serves both
        assert r2.call("INCR", "counter") == 1 and r.call("INCR", "counter") == 2
        r.close()
        r2.close()
        print(f"redis {NKEYS} keys: dump {stats.total_seconds * 1e3:.0f} ms (frozen {stats.frozen_seconds * 1e3:.0f} ms, "
              f"{stats.bytes_read / 2**20:.0f} MiB read, {stats.stored_bytes / 2**20:.1f} MiB stored), "
              f"restore {res.total_seconds * 1e3:.0f} ms, {stats.threads} threads")
