"""Established TCP connections kept alive across dump and restore (``--tcp-established``).

The client is this test process, outside the dumped tree; the server is
scenarios/py_tcp_conn.py (or redis-server).  Each test leaves data queued in
both directions at dump time and checks every byte on both sides after it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ckpt.control.seize import alive
from ckpt.dump import PROCESS_DUMPERS, dump, restore
from ckpt.errors import Unsupported
from ckpt.image.show import show_dict
from ckpt.kernel.pidfd import pidfd_getfd, pidfd_open
from ckpt.resources import netlock
from hosts import SecondHost
from targets import SCENARIOS, Target, spawn, tracer_of, wait_until
from test_sockets import REDIS, Redis

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, TCP_REPAIR, nftables)"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables), which the tests use, is not "
                                                                     "installed")]

TCP_INFO_STATE_ESTABLISHED = 1
CLONE_NEWNET = 0x40000000


def _pattern(offset: int, n: int) -> bytes:
    """The bytes py_tcp_conn.py sends at stream offsets offset..offset+n (k % 251)."""
    return bytes((offset + i) % 251 for i in range(n))


def _state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


class Server:
    """py_tcp_conn.py and our connection to it."""

    def __init__(self, t: Target, host: str, netns_of: int | None = None) -> None:
        self.t, self.host = t, host
        self.port = int(t.ready(timeout=20)["port"])
        self.client = _connect_in(netns_of, (host, self.port))
        t.expect("ACCEPTED", timeout=10)
        self.received = 0  # pattern bytes read so far
        self.sent = b""    # bytes our kernel took that the server has not DRAINed yet

    def send_unread(self, n: int) -> int:
        """Queue up to ``n`` random bytes towards the server without blocking (it does not read them)."""
        data = os.urandom(n)
        self.client.setblocking(False)
        done = 0
        try:
            while done < n:
                done += self.client.send(data[done:])
        except BlockingIOError:
            pass
        self.client.settimeout(10)
        self.sent += data[:done]
        return done

    def blast(self, n: int) -> int:
        self.t.write(f"BLAST {n}\n".encode())
        return int(self.t.expect("BLASTED", timeout=10).split("=")[1])

    def read_pattern(self, n: int) -> None:
        got = bytearray()
        while len(got) < n:
            chunk = self.client.recv(min(1 << 20, n - len(got)))
            assert chunk, f"the server closed the connection after {self.received + len(got)} bytes"
            got += chunk
        assert bytes(got) == _pattern(self.received, n), "the server's bytes came back altered"
        self.received += n

    def drain(self) -> str:
        """The server reads everything we sent; both sides check the digest."""
        want = hashlib.sha256(self.sent).hexdigest()
        self.t.write(f"DRAIN {len(self.sent)}\n".encode())
        line = self.t.expect("DRAINED", timeout=20)
        assert f"sha={want}" in line, "the server did not receive our bytes exactly"
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = self.client.recv(100)
            assert chunk, "the server closed the connection"
            reply += chunk
        assert reply.decode() == f"GOT {want} {len(self.sent)}\n"
        self.sent = b""
        return line

    def serve(self, *lines: str) -> None:
        """New messages both ways on the same connection."""
        self.t.write(b"SERVE\n")
        for text in lines:
            self.client.sendall(text.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = self.client.recv(100)
                assert chunk, "the server closed the connection"
                reply += chunk
            assert reply == f"echo {text}\n".encode()
        self.client.sendall(b"BYE\n")
        assert self.t.expect("SERVED", timeout=10) == f"SERVED n={len(lines)}"

    def conn_fd(self, pid: int) -> int:
        """The server's descriptor of our connection."""
        for name in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                with _dup(pid, int(name)) as s:
                    if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        return int(name)
        raise AssertionError(f"process {pid} holds no connection")


def _connect_in(pid: int | None, addr: tuple[str, int]) -> socket.socket:
    """A connection to ``addr`` made from the network namespace of ``pid`` (a thread of ours setns'd there)."""
    if pid is None:
        return socket.create_connection(addr, timeout=10)
    out: list[socket.socket | BaseException] = []

    def there() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append(socket.create_connection(addr, timeout=10))  # the socket stays in that namespace
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out.append(exc)

    th = threading.Thread(target=there)  # setns(CLONE_NEWNET) changes only the calling thread
    th.start()
    th.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _dup(pid: int, fd: int) -> socket.socket:
    pidfd = pidfd_open(pid)
    try:
        return socket.socket(fileno=pidfd_getfd(pidfd, fd))
    finally:
        os.close(pidfd)


def _start(py_target, host: str) -> Server:  # noqa: ANN001
    return Server(py_target("py_tcp_conn.py", host, stdin_pipe=True, stderr=subprocess.DEVNULL), host)


def _no_lock_left() -> None:
    assert netlock.locked() == {}
    assert subprocess.run(["nft", "list", "table", "inet", netlock.TABLE], capture_output=True).returncode != 0, \
        "ckpt's nft table was left behind"


@contextmanager
def _acks_dropped(host: str, client_port: int, server_port: int) -> Iterator[None]:
    """Our packets to the server are dropped (a table of the test's own): what it sends stays unacknowledged."""
    ip = "ip6" if ":" in host else "ip"
    table = "ckpt_test_acks"
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
        f"add table inet {table}\n"
        f"add chain inet {table} c {{ type filter hook prerouting priority raw; policy accept; }}\n"
        f"add rule inet {table} c {ip} saddr {host} tcp sport {client_port} tcp dport {server_port} drop\n"))
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)


def _image_tcp(image: Path) -> dict:
    """The TcpRepair record of the one established connection of the image, as ``ckpt show`` decodes it."""
    found = []

    def walk(v: object) -> None:
        if isinstance(v, dict):
            if "tcp" in v and isinstance(v["tcp"], dict):
                found.append(v["tcp"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(show_dict(image))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_connection_survives_dump_and_restore(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                              host: str) -> None:
    srv = _start(py_target, host)
    srv.serve("before")
    queued = srv.send_unread(400_000)  # more than its receive buffer: some stay in our send queue
    client_port = srv.client.getsockname()[1]
    with _acks_dropped(host, client_port, srv.port):
        blasted = srv.blast(4_000_000)  # the first window's worth reaches us, unacknowledged; the rest waits
        time.sleep(0.05)
        stats = dump(srv.t.pid, tmp_path / "img", tcp_established=True)
        srv.t.proc.returncode = -signal.SIGKILL
        tcp = _image_tcp(tmp_path / "img")
        rq, sq, unsent = len(tcp["recv_queue"]) // 2, len(tcp["send_queue"]) // 2, tcp["unsent"]
        assert 0 < rq < queued and 0 < unsent < sq  # every queue had bytes: received, sent-unacked, unsent
        assert tcp["lock"] in netlock.locked()  # the peer stays locked out until the restore
        time.sleep(0.3)  # the process is gone: its socket closed in repair mode, nothing reached us
        assert _state(srv.client) == TCP_INFO_STATE_ESTABLISHED
        r = restore(tmp_path / "img", inherit_fds=srv.t.stdio_fds)
        restored.append(r.pid)
        assert r.pid == srv.t.pid and tracer_of(r.pid) == 0
        assert tcp["lock"] not in netlock.locked()
    _no_lock_left()
    print(f"{host}: {queued} bytes to the server ({rq} in its receive queue), {blasted} from it ({sq - unsent} "
          f"sent-unacknowledged, {unsent} unsent); dump {stats.total_seconds * 1e3:.0f} ms, "
          f"restore {r.total_seconds * 1e3:.0f} ms; notes {r.notes}")
    srv.read_pattern(blasted)  # what the server had written: sent-unacknowledged and never sent
    assert srv.drain().endswith("nonblock=1")  # it got our bytes exactly; O_NONBLOCK came back
    srv.serve("after", "restore")
    assert srv.send_unread(1000) == 1000 and srv.blast(1000) == 1000
    srv.read_pattern(1000)
    srv.drain()


@pytest.mark.parametrize("stopped", [False, True], ids=["R", "s"])
def test_leave_running_keeps_the_connection_and_unlocks(py_target, tmp_path: Path,  # noqa: ANN001
                                                         stopped: bool) -> None:
    srv = _start(py_target, "127.0.0.1")
    queued = srv.send_unread(50_000)
    blasted = srv.blast(3_000_000)
    fd = srv.conn_fd(srv.t.pid)
    with _dup(srv.t.pid, fd) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1  # inherited from the listener
    dump(srv.t.pid, tmp_path / "img", leave_running=not stopped, leave_stopped=stopped, tcp_established=True)
    assert srv.t.alive() and tracer_of(srv.t.pid) == 0
    if stopped:  # -s: left stopped with its connection live (unlocked, out of repair mode), like -R
        os.kill(srv.t.pid, signal.SIGCONT)
    _no_lock_left()
    assert len(_image_tcp(tmp_path / "img")["recv_queue"]) // 2 == queued
    with _dup(srv.t.pid, fd) as s:  # leaving repair mode clears SO_REUSEADDR: the dump set it back
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    srv.read_pattern(blasted)
    assert srv.drain().endswith("nonblock=1")
    srv.serve("still", "here")


def test_refused_without_the_flag(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    srv = _start(py_target, "127.0.0.1")
    srv.send_unread(1000)
    ours = srv.client.getsockname()[1]
    with pytest.raises(Unsupported, match=rf"process {srv.t.pid}: fd \d+ is an established IPv4 TCP connection "
                                          rf"127\.0\.0\.1:{srv.port} -> 127\.0\.0\.1:{ours}, which ckpt cannot dump"
                       ) as exc:
        dump(srv.t.pid, tmp_path / "img")
    assert "--tcp-established" in (exc.value.hint or "") and "--tcp-close" in (exc.value.hint or "")
    assert srv.t.alive() and tracer_of(srv.t.pid) == 0 and not (tmp_path / "img").exists()
    _no_lock_left()
    srv.drain()
    srv.serve("untouched")


def test_failed_dump_after_the_lock_leaves_the_connection_working(py_target, tmp_path: Path,  # noqa: ANN001
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    srv = _start(py_target, "::1")
    srv.send_unread(20_000)
    blasted = srv.blast(2_000_000)
    fd = srv.conn_fd(srv.t.pid)
    seen: list[dict[str, int]] = []

    def fail(ctx) -> None:  # noqa: ANN001 - runs after the files: the connection is locked and in repair mode
        seen.append(netlock.locked())
        raise Unsupported("a resource that refuses")

    monkeypatch.setattr("ckpt.dump.PROCESS_DUMPERS", [*PROCESS_DUMPERS, ("refuses", fail)])
    with pytest.raises(Unsupported, match="refuses"):
        dump(srv.t.pid, tmp_path / "img", tcp_established=True)
    assert len(seen) == 1 and len(seen[0]) == 1  # it was locked when the dump failed
    assert srv.t.alive() and tracer_of(srv.t.pid) == 0 and not (tmp_path / "img").exists()
    _no_lock_left()
    with _dup(srv.t.pid, fd) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    srv.read_pattern(blasted)
    srv.drain()
    srv.serve("carries", "on")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_target_in_another_network_namespace_is_locked_there(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock goes into the target's network namespace (nft through nsenter), and comes out of it again."""
    argv = ["unshare", "--net", "sh", "-c",
            f'ip link set lo up && exec "$0" -u {SCENARIOS / "py_tcp_conn.py"} 127.0.0.1', sys.executable]
    with spawn(argv, stdin_pipe=True, stderr=subprocess.DEVNULL) as t:
        srv = Server(t, "127.0.0.1", netns_of=t.pid)
        srv.send_unread(10_000)
        blasted = srv.blast(1_000_000)
        nsfd = os.open(f"/proc/{t.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        seen: list[tuple[dict[str, int], dict[str, int]]] = []

        def fail(ctx) -> None:  # noqa: ANN001
            seen.append((netlock.locked(nsfd), netlock.locked()))
            raise Unsupported("a resource that refuses")

        try:
            monkeypatch.setattr("ckpt.dump.PROCESS_DUMPERS", [*PROCESS_DUMPERS, ("refuses", fail)])
            with pytest.raises(Unsupported, match="refuses"):
                dump(t.pid, tmp_path / "img", tcp_established=True)
            (there, here), = seen
            assert len(there) == 1 and here == {}  # locked in the target's namespace, not in ours
            assert netlock.locked(nsfd) == {}
        finally:
            os.close(nsfd)
        _no_lock_left()
        assert t.alive() and tracer_of(t.pid) == 0
        srv.read_pattern(blasted)
        srv.drain()
        srv.serve("namespaced")


# --- ckpt killed while it holds the lock ------------------------------------------------------------

CKPT = [sys.executable, "-m", "ckpt.cli"]


def _paused_at(point: str, *args: str, nth: int = 1,
               until: Callable[[int], bool] = lambda ckpt_pid: True) -> subprocess.Popen:
    """``ckpt ARGS``, stopped by itself at the test point ``point`` (ckpt.testpoint) once ``until(its pid)``.

    ``CKPT_TEST_HOOK`` stops it at the ``nth`` pass; ``until`` may send it on (SIGCONT) to look again.
    """
    env = {**os.environ, "CKPT_TEST_HOOK": f"{point}:stop:{nth}"}
    ckpt = subprocess.Popen([*CKPT, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    said = []
    for line in ckpt.stderr:
        said.append(line)
        if line.strip() == f"ckpt: paused at {point}":
            wait_until(lambda: _stopped(ckpt.pid), f"ckpt stops at {point}")
            if until(ckpt.pid):
                return ckpt
            os.kill(ckpt.pid, signal.SIGCONT)
    ckpt.wait()
    raise AssertionError(f"ckpt {' '.join(args)} did not stop at {point} (exit {ckpt.returncode}): {''.join(said)}")


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def _kill(ckpt: subprocess.Popen, target: int) -> None:
    ckpt.kill()
    ckpt.wait()
    ckpt.stderr.close()
    wait_until(lambda: tracer_of(target) == 0, "the kernel let the target go")


def _locks_of(pid: int) -> dict[str, str]:
    """The locks of ``pid``'s connections now (tag → table), whichever ckpt run took them."""
    return {tag: table for tag, table in netlock.locked().items() if f" pid {pid}-" in tag}


@pytest.mark.parametrize("mode", [["-R"], []], ids=["R", "ending"])
def test_killed_while_holding_the_lock_leaves_the_connection_working(py_target, tmp_path: Path,  # noqa: ANN001
                                                                     mode: list[str]) -> None:
    """SIGKILL while the lock is in place: the kernel deletes it with ckpt's netlink socket and lets the target
    go; the connection carries on with no further ckpt command."""
    srv = _start(py_target, "127.0.0.1")
    srv.send_unread(20_000)
    blasted = srv.blast(1_000_000)
    pid = srv.t.pid
    ckpt = _paused_at("netlock.locked", "dump", *mode, "--tcp-established", "-t", str(pid),
                      "-D", str(tmp_path / "img"))
    try:
        assert list(_locks_of(pid).values()) == [f"{netlock.TABLE}-{ckpt.pid}"]  # its own socket's table
    finally:
        _kill(ckpt, pid)
    wait_until(lambda: _locks_of(pid) == {}, "the lock in the killed ckpt's own table is gone")
    tables = subprocess.run(["nft", "list", "tables"], check=True, capture_output=True, text=True).stdout
    assert f"{netlock.TABLE}-{ckpt.pid}" not in tables.split(), tables
    assert srv.t.alive() and not (tmp_path / "img").exists()
    srv.read_pattern(blasted)  # data flows both ways on the same connection
    srv.drain()
    srv.serve("after", "the kill")


def test_lock_left_by_a_dump_killed_before_ending_its_target_is_removed_by_the_next_run(
        py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """Killed after it made the lock persistent (for the restore) but before it ended the target: the target runs
    on behind a lock no restore will lift; the next ckpt run using the lock removes it, with a note."""
    srv = _start(py_target, "127.0.0.1")
    srv.send_unread(20_000)
    blasted = srv.blast(1_000_000)
    pid = srv.t.pid
    ckpt = _paused_at("netlock.persisted", "dump", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img"))
    try:
        (tag, table), = _locks_of(pid).items()
        assert table == netlock.TABLE  # persistent: out of the dump's own table, into the shared one
    finally:
        _kill(ckpt, pid)
    try:
        assert srv.t.alive() and _locks_of(pid) == {tag: netlock.TABLE}
        r = subprocess.run([*CKPT, "dump", "-R", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img2")],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"removed the network lock {tag!r}" in r.stderr and "which runs on" in r.stderr, r.stderr
    finally:
        netlock.unlock({tag})  # whatever happened, no other test sees it
    _no_lock_left()
    srv.read_pattern(blasted)
    srv.drain()
    srv.serve("after", "the next run")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _repair_and_reuse(pid: int, fd: int) -> tuple[int, int]:
    with _dup(pid, fd) as s:
        return s.getsockopt(socket.IPPROTO_TCP, 19), s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)  # TCP_REPAIR


def test_killed_while_reading_in_repair_mode_the_socket_is_taken_out_of_it(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """SIGKILL while the connection is read in repair mode: ckpt's janitor (a forked child holding a duplicate of
    the socket) sees it die and takes the socket out of repair mode, with its SO_REUSEADDR; the program's
    connection carries on with no further ckpt command."""
    srv = _start(py_target, "127.0.0.1")
    srv.send_unread(20_000)
    blasted = srv.blast(1_000_000)
    pid = srv.t.pid
    fd = srv.conn_fd(pid)
    before = _repair_and_reuse(pid, fd)
    assert before[0] == 0
    ckpt = _paused_at("tcp.repairing", "dump", "-R", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img"))
    assert _repair_and_reuse(pid, fd)[0] == 1 and len(_children(ckpt.pid)) == 1  # in repair mode; the janitor
    _kill(ckpt, pid)
    wait_until(lambda: _repair_and_reuse(pid, fd) == before, "the janitor took the socket out of repair mode")
    assert _locks_of(pid) == {}
    srv.read_pattern(blasted)
    srv.drain()
    srv.serve("out of", "repair mode")
    r = subprocess.run([*CKPT, "dump", "-R", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img2")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 0 and "repair mode" not in r.stderr, r.stderr


def test_socket_left_in_repair_mode_is_taken_out_of_it_by_the_next_run(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """ckpt and its janitor both killed while the connection is read in repair mode (a `kill -9` of the group):
    the next dump of that process takes it out of repair mode, with a note."""
    srv = _start(py_target, "127.0.0.1")
    srv.send_unread(20_000)
    blasted = srv.blast(1_000_000)
    pid = srv.t.pid
    fd = srv.conn_fd(pid)
    ckpt = _paused_at("tcp.repairing", "dump", "-R", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img"))
    (janitor,) = _children(ckpt.pid)
    os.kill(janitor, signal.SIGKILL)
    # (until it has run, it holds a copy of ckpt's netlink socket, whose lock goes only with the last copy)
    wait_until(lambda: not alive(janitor), "the janitor is dead")
    _kill(ckpt, pid)
    # the kernel removes the table of a dead owner from a work queue: soon, not at once (seen late under load)
    wait_until(lambda: _locks_of(pid) == {}, "the lock in the killed ckpt's own table is gone")
    assert _repair_and_reuse(pid, fd)[0] == 1  # left on
    r = subprocess.run([*CKPT, "dump", "-R", "--tcp-established", "-t", str(pid), "-D", str(tmp_path / "img2")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"fd {fd} " in r.stderr and "the socket was in repair mode" in r.stderr, r.stderr
    assert _repair_and_reuse(pid, fd) == (0, 1)
    _no_lock_left()
    srv.read_pattern(blasted)
    srv.drain()
    srv.serve("out of", "repair mode")


def test_refused_without_nf_tables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_nf_tables(netns: int | None = None) -> None:
        raise OSError(errno.EPROTONOSUPPORT, "socket")

    monkeypatch.setattr(netlock.nft.NftSocket, "open", no_nf_tables)
    with pytest.raises(Unsupported, match="needs nf_tables") as exc:
        dump(os.getpid(), tmp_path / "img", tcp_established=True)  # refused before anything is frozen
    assert "nf_tables" in (exc.value.hint or "") and "--tcp-close" in (exc.value.hint or "")


# --- redis ---------------------------------------------------------------------------------------

def _redis_conf(tmp_path: Path, port: int, bind: str) -> Path:
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind {bind}\nsave \"\"\nappendonly no\ndaemonize no\ndir {tmp_path}\n"
                    "logfile \"\"\nprotected-mode no\n")
    return conf


def _start_movable_redis(conf: Path) -> subprocess.Popen:
    """redis-server with no pipe to us (a process that migrates must not hold one)."""
    return subprocess.Popen([REDIS, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_redis_client_connection_survives(tmp_path: Path, restored: list[int]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = _redis_conf(tmp_path, port, "127.0.0.1")
    with spawn([REDIS, str(conf)], stderr=subprocess.DEVNULL) as t:
        r = Redis.when_up(port, timeout=15)
        values = {f"key:{i}": f"value-{i}-{random.getrandbits(64):x}" for i in range(1000)}
        r.sock.sendall(b"".join(Redis.encode("SET", k, v) for k, v in values.items()))
        assert [r.reply() for _ in values] == ["OK"] * len(values)
        dump(t.pid, tmp_path / "img", tcp_established=True)
        t.proc.returncode = -signal.SIGKILL
        # A command sent while redis is gone: dropped by the lock, retransmitted by our kernel after the restore.
        r.sock.sendall(Redis.encode("GET", "key:7"))
        time.sleep(0.2)
        res = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(res.pid)
        assert res.pid == t.pid and tracer_of(t.pid) == 0
        _no_lock_left()
        assert r.reply() == values["key:7"].encode()  # the same connection, the answer to the locked-out GET
        for k in random.Random(3).sample(sorted(values), 100):
            assert r.call("GET", k) == values[k].encode()
        assert r.call("SET", "after", "restore") == "OK" and r.call("GET", "after") == b"restore"
        assert r.call("DBSIZE") == len(values) + 1
        r2 = Redis(port, timeout=15)  # the restored listener accepts new clients too
        assert r2.call("GET", "after") == b"restore"
        r.sock.close()
        r2.sock.close()


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_migration_needs_the_local_address_at_the_destination(second_host: SecondHost, tmp_path: Path) -> None:
    """Redis holds a connection to this host's address, which the second host does not have: the destination's
    restore fails naming it, and the source serves on with the same connection, unlocked."""
    from test_migrate import _free_port, _migrate, _Receiver, _token, _untracked

    host, port, rx_port, token = second_host, _free_port(), _free_port(), _token(tmp_path)
    proc = _start_movable_redis(_redis_conf(tmp_path, port, "0.0.0.0"))
    try:
        r = Redis.when_up(port, host.host_address, timeout=15)
        assert r.call("SET", "k", "v") == "OK"
        rx = _Receiver(host, tmp_path, token, rx_port)
        res, _ = _migrate(host, proc.pid, rx_port, token, tmp_path, "--tcp-established", "--stop-and-copy")
        assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
        assert f"its local address {host.host_address} does not exist on this host" in res.stderr, res.stderr
        assert rx.result().get("outcome") != "running"
        assert proc.poll() is None and tracer_of(proc.pid) == 0 and _untracked(proc.pid)
        _no_lock_left()
        assert r.call("GET", "k") == b"v" and r.call("INCR", "n") == 1  # the same connection
        r.sock.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_migration_source_killed_before_the_switch_leaves_the_connection_working(second_host: SecondHost,
                                                                                  tmp_path: Path) -> None:
    """ckpt migrate killed while its final dump holds the lock (the destination does not run the process yet):
    the kernel drops the lock with the source's socket, and redis serves on here on the same connection."""
    from test_migrate import _free_port, _Receiver, _token

    host, port, rx_port, token = second_host, _free_port(), _free_port(), _token(tmp_path)
    proc = _start_movable_redis(_redis_conf(tmp_path, port, "0.0.0.0"))
    try:
        r = Redis.when_up(port, host.host_address, timeout=15)
        assert r.call("SET", "k", "v") == "OK"
        _Receiver(host, tmp_path, token, rx_port)
        # The first lock is the probe's (in the first table of ckpt's own, let go at once); the second, the
        # final dump's (in its second one).
        ckpt = _paused_at("netlock.locked", "migrate", "-t", str(proc.pid), "--to", f"{host.address}:{rx_port}",
                          "--token-file", str(token), "--tcp-established", "--stop-and-copy", nth=2,
                          until=lambda me: list(_locks_of(proc.pid).values()) == [f"{netlock.TABLE}-{me}-2"])
        try:
            assert proc.poll() is None
        finally:
            _kill(ckpt, proc.pid)
        assert proc.poll() is None and _locks_of(proc.pid) == {}
        assert r.call("GET", "k") == b"v" and r.call("INCR", "n") == 1  # the same connection
        r.sock.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_client_connection_follows_redis_to_the_second_host(second_host: SecondHost, tmp_path: Path) -> None:
    """Redis serves on a service address of its own; the migration's action script moves that address to the
    second host before the source lifts its lock, and the client's same connection carries on there."""
    from test_migrate import _free_port, _migrate, _Receiver, _token

    host, port, rx_port, token = second_host, _free_port(), _free_port(), _token(tmp_path)
    vip = f"10.202.{host.subnet}.1"
    route = ["ip", "route", "replace", f"{vip}/32", "via", host.address]
    subprocess.run(["ip", "addr", "add", f"{vip}/32", "dev", "lo"], check=True, close_fds=True)
    host.check_output(["ip", "addr", "add", f"{vip}/32", "dev", "lo"])  # there too: the restore binds it
    script = tmp_path / "move-address.sh"
    script.write_text(f"#!/bin/sh\n[ \"$CKPT_SCRIPT_ACTION\" = post-migrate ] || exit 0\n"
                      f"ip addr del {vip}/32 dev lo && {' '.join(route)}\n")
    script.chmod(0o700)
    proc = _start_movable_redis(_redis_conf(tmp_path, port, vip))
    try:
        # From this host's own address (not the service address): replies must leave the second host.
        r = Redis.when_up(port, vip, source=host.host_address, timeout=15)
        values = {f"key:{i}": f"value-{i}" for i in range(200)}
        r.sock.sendall(b"".join(Redis.encode("SET", k, v) for k, v in values.items()))
        assert [r.reply() for _ in values] == ["OK"] * len(values)
        rx = _Receiver(host, tmp_path, token, rx_port)
        res, stats = _migrate(host, proc.pid, rx_port, token, tmp_path, "--tcp-established",
                              "--action-script", str(script))
        assert res.returncode == 0, res.stderr
        assert "warning" not in res.stderr, res.stderr
        proc.wait(timeout=10)  # the source is gone; redis runs in the second host, bound to the moved address
        assert rx.result().get("outcome") == "running"
        for k in ("key:0", "key:77", "key:199"):  # the same connection, now to the second host
            assert r.call("GET", k) == values[k].encode()
        assert r.call("SET", "after", "migrate") == "OK" and r.call("DBSIZE") == len(values) + 1
        r.sock.close()
        _no_lock_left()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        subprocess.run(["ip", "route", "del", f"{vip}/32"], capture_output=True, close_fds=True)
        subprocess.run(["ip", "addr", "del", f"{vip}/32", "dev", "lo"], capture_output=True, close_fds=True)
