"""Every state of a TCP connection that a descriptor holds, kept with ``--tcp-established``.

The test makes each connection itself (its own end is the peer, outside the dumped tree, or both ends go
to the tree), brings it to its state — packets of the scenario's end dropped by a table of the test's own
where the state needs an acknowledgement not to arrive — and hands the scenario's ends to
scenarios/py_tcp_states.py.  After the restore the scenario checks each of its sockets (state, bytes
queued, EOF, whether a write fails) and the test checks what its ends receive: the bytes the scenario's
ends had sent, then EOF where they had sent a FIN.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import Unsupported
from ckpt.image.show import show_dict
from ckpt.resources import netlock
from targets import wait_until

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, TCP_REPAIR, nftables)"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables), which the tests use, is not "
                                                                     "installed")]
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 7: "CLOSE", 8: "CLOSE_WAIT",
          9: "LAST_ACK", 11: "CLOSING"}
_TABLE = "ckpt_test_states"


def _state(s: socket.socket) -> str:
    return STATES.get(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0], "?")


class Drops:
    """A table of the test's own dropping the packets of chosen connections from one end to the other."""

    def __init__(self) -> None:
        subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
            f"add table inet {_TABLE}\n"
            f"add chain inet {_TABLE} c {{ type filter hook prerouting priority raw; policy accept; }}\n"))

    def drop(self, src: socket.socket) -> None:
        """``src``'s packets to its peer are dropped from now on."""
        (host, sport, *_), dport = src.getsockname(), src.getpeername()[1]
        ip = "ip6" if ":" in host else "ip"
        subprocess.run(["nft", "add", "rule", "inet", _TABLE, "c", ip, "saddr", host, "tcp", "sport", str(sport),
                        "tcp", "dport", str(dport), "drop"], check=True)

    def drop_to(self, host: str, port: int) -> None:
        """Packets to ``host``:``port`` are dropped from now on (a connect() there stays in SYN_SENT)."""
        ip = "ip6" if ":" in host else "ip"
        subprocess.run(["nft", "add", "rule", "inet", _TABLE, "c", ip, "daddr", host, "tcp", "dport", str(port),
                        "drop"], check=True)

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", _TABLE], check=False)


@contextmanager
def _drops() -> Iterator[Drops]:
    d = Drops()
    try:
        yield d
    finally:
        d.close()


def _locks_of(pid: int) -> list[str]:
    """The network locks of connections of process ``pid`` (other tests' may be there too)."""
    return [tag for tag in netlock.locked() if f" pid {pid}-" in tag]


def _pair(lst: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(the scenario's end, the test's end) of a new connection."""
    s = socket.create_connection(lst.getsockname()[:2])
    p, _ = lst.accept()
    for x in (s, p):
        x.settimeout(20)
    return s, p


def _image_has(image: Path, field: str) -> bool:
    """Does a TcpRepair record of the image set ``field`` (as ``ckpt show`` decodes it)?"""
    def walk(v: object) -> bool:
        if isinstance(v, dict):
            return bool(v.get(field)) or any(walk(x) for x in v.values())
        return isinstance(v, list) and any(walk(x) for x in v)
    return walk(show_dict(image))


def _fill(s: socket.socket) -> bytes:
    """Write to non-blocking ``s`` until its peer's window and its own buffer are full; what was written."""
    chunk, out = bytes(range(256)) * 256, bytearray()
    try:
        while True:
            out += chunk[:s.send(chunk)]
    except BlockingIOError:
        return bytes(out)


def _settled(s: socket.socket, state: str) -> None:
    wait_until(lambda: _state(s) == state, f"the connection is in {state}")


def _hand_over(py_target, tmp_path: Path, ends: list[tuple[socket.socket, dict]]):  # noqa: ANN001, ANN202
    """Start py_tcp_states.py, give it the sockets of ``ends`` with their specs, close ours; it has checked
    them once (round 1)."""
    path = str(tmp_path / "ctl")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.bind(path)
        ctl.listen(1)
        t = py_target("py_tcp_states.py", path, stderr=subprocess.DEVNULL)
        conn, _ = ctl.accept()
        with conn:
            socket.send_fds(conn, [json.dumps([spec for _, spec in ends]).encode()], [s.fileno() for s, _ in ends])
    for s, _ in ends:
        s.close()
    t.ready(20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS states round=1"
    return t


def _spec(name: str, state: str, data: bytes, eof: bool, write: str) -> dict:
    return {"name": name, "state": state, "data": data.decode("latin-1"), "eof": eof, "write": write}


def _read_all(p: socket.socket, want: bytes, eof: bool) -> None:
    """The test's end gets ``want`` (then EOF if ``eof``): what the scenario's end had sent and sends after."""
    got = b""
    while len(got) < len(want):
        chunk = p.recv(len(want) - len(got))
        assert chunk, f"EOF after {got!r}, want {want!r}"
        got += chunk
    assert got == want
    if eof:
        assert p.recv(1) == b""


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("leave_running", [False, True], ids=["restored", "R"])
def test_every_closing_state_comes_back(py_target, tmp_path: Path, restored: list[int], host: str,  # noqa: ANN001
                                        leave_running: bool) -> None:
    """Each state restored (or, with -R, left as it was by a dump that reads it in repair mode)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = socket.socket(family, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(16)
    ends, peers = [], []  # (scenario's socket, spec); (test's socket, what it must read after, EOF)

    def kept(s: socket.socket, p: socket.socket, spec: dict, p_reads: bytes, p_eof: bool) -> None:
        """``s`` (once in its state) goes to the scenario; ``p`` must then read ``p_reads`` (and EOF)."""
        _settled(s, spec["state"])
        ends.append((s, spec))
        peers.append((p, p_reads, p_eof))

    with _drops() as drops:
        # CLOSE_WAIT: the peer sent a FIN; our end still writes
        s, p = _pair(lst)
        p.sendall(b"p-close-wait")
        s.sendall(b"s-close-wait")
        p.shutdown(socket.SHUT_WR)
        kept(s, p, _spec("close_wait", "CLOSE_WAIT", b"p-close-wait", True, "ok"), b"s-close-waitafter", False)
        # FIN_WAIT2: our FIN acknowledged, the peer still writes
        s, p = _pair(lst)
        p.sendall(b"p-fin-wait2")
        s.sendall(b"s-fin-wait2")
        s.shutdown(socket.SHUT_WR)
        kept(s, p, _spec("fin_wait2", "FIN_WAIT2", b"p-fin-wait2", False, "EPIPE"), b"s-fin-wait2", True)
        # FIN_WAIT1: data and FIN sent, never acknowledged (our packets dropped)
        s, p = _pair(lst)
        drops.drop(s)
        s.sendall(b"s-fin-wait1")
        s.shutdown(socket.SHUT_WR)
        p.sendall(b"p-fin-wait1")
        wait_until(lambda: s.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"p-fin-wait1", "data arrives")
        kept(s, p, _spec("fin_wait1", "FIN_WAIT1", b"p-fin-wait1", False, "EPIPE"), b"s-fin-wait1", True)
        # FIN_WAIT1, the FIN queued behind data never sent: the peer's ACKs dropped, its window is used up
        s, p = _pair(lst)
        drops.drop(p)
        s.setblocking(False)
        blocked = _fill(s)
        s.shutdown(socket.SHUT_WR)
        kept(s, p, _spec("fin_wait1_queued", "FIN_WAIT1", b"", False, "EPIPE"), blocked, True)
        # CLOSING: both sent a FIN, ours not acknowledged
        s, p = _pair(lst)
        drops.drop(s)
        s.sendall(b"s-closing")
        s.shutdown(socket.SHUT_WR)
        p.sendall(b"p-closing")
        p.shutdown(socket.SHUT_WR)
        kept(s, p, _spec("closing", "CLOSING", b"p-closing", True, "EPIPE"), b"s-closing", True)
        # LAST_ACK: the peer's FIN first, then ours, not acknowledged
        s, p = _pair(lst)
        p.sendall(b"p-last-ack")
        p.shutdown(socket.SHUT_WR)
        _settled(s, "CLOSE_WAIT")
        drops.drop(s)
        s.sendall(b"s-last-ack")
        s.shutdown(socket.SHUT_WR)
        kept(s, p, _spec("last_ack", "LAST_ACK", b"p-last-ack", True, "EPIPE"), b"s-last-ack", True)
        # ESTABLISHED, shut for reading (SHUT_RD): the queued bytes, then EOF; writes go on
        s, p = _pair(lst)
        p.sendall(b"p-shut-rd")
        wait_until(lambda: s.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"p-shut-rd", "data arrives")
        s.shutdown(socket.SHUT_RD)
        kept(s, p, _spec("shut_rd", "ESTABLISHED", b"p-shut-rd", True, "ok"), b"after", False)
        # both ends in the tree: CLOSE_WAIT and FIN_WAIT2, bytes queued both ways
        a, b = _pair(lst)
        a.sendall(b"a-to-b")
        b.sendall(b"b-to-a")
        b.shutdown(socket.SHUT_WR)
        _settled(a, "CLOSE_WAIT")
        _settled(b, "FIN_WAIT2")
        ends += [(a, _spec("tree_close_wait", "CLOSE_WAIT", b"b-to-a", True, "ok")),
                 (b, _spec("tree_fin_wait2", "FIN_WAIT2", b"a-to-b", False, "EPIPE"))]
        lst.close()

        t = _hand_over(py_target, tmp_path, ends)
        dump(t.pid, tmp_path / "img", tcp_established=True, leave_running=leave_running)
        assert _image_has(tmp_path / "img", "fin_queued") and _image_has(tmp_path / "img", "shut_rd")
        if not leave_running:
            t.proc.returncode = -signal.SIGKILL
            r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
            restored.append(r.pid)
        assert _locks_of(t.pid) == []
    # our drops gone: what the scenario's ends had sent (or send now) reaches us, retransmitted
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS states round=2"
    for p, want, eof in peers:
        _read_all(p, want, eof)
        p.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_a_bound_socket_never_connected_keeps_its_address(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                           host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    local = list(s.getsockname()[:2])
    t = _hand_over(py_target, tmp_path, [(s, {"name": "bound", "state": "CLOSE", "data": "", "local": local})])
    dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS states round=2"


def test_a_connection_in_its_handshake_is_refused_with_the_reason(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """SYN_SENT: TCP_REPAIR cannot make a handshake under way; the dump names the state and why."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    with _drops() as drops:
        drops.drop_to("127.0.0.1", lst.getsockname()[1])
        s = socket.socket()
        s.setblocking(False)
        assert s.connect_ex(lst.getsockname()) in (115, 11)  # EINPROGRESS
        t = _hand_over(py_target, tmp_path, [(s, _spec("syn_sent", "SYN_SENT", b"", False, "ok"))])
        with pytest.raises(Unsupported, match=r"in state SYN_SENT, which ckpt cannot dump") as e:
            dump(t.pid, tmp_path / "img", tcp_established=True)
        assert "handshake is not finished" in (e.value.hint or "")
        assert t.proc.poll() is None and _locks_of(t.pid) == []
    lst.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_tcp_close_gives_connections_back_reset(py_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                 host: str) -> None:
    """--tcp-close: an established and a half-closed connection come back as connections their peer reset:
    ECONNRESET at the first read, then EOF, and EPIPE on writes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lst = socket.socket(family, socket.SOCK_STREAM)
    lst.bind((host, 0))
    lst.listen(4)
    s1, p1 = _pair(lst)
    s1.sendall(b"unread by the peer")
    s2, p2 = _pair(lst)
    p2.shutdown(socket.SHUT_WR)
    _settled(s2, "CLOSE_WAIT")
    t = _hand_over(py_target, tmp_path, [(s1, {**_spec("established", "ESTABLISHED", b"", False, "ok"), "reset": 1}),
                                         (s2, {**_spec("close_wait", "CLOSE_WAIT", b"", True, "ok"), "reset": 1})])
    dump(t.pid, tmp_path / "img", tcp_close=True)
    t.proc.returncode = -signal.SIGKILL
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert not [n for n in r.notes if "--tcp-close" in n], r.notes
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS states round=2"
    for x in (lst, p1, p2):
        x.close()


def test_a_connection_accepted_on_a_dual_stack_listener_keeps_ipv6_v6only_off(py_target, tmp_path: Path,  # noqa: ANN001
                                                                               restored: list[int]) -> None:
    """A listener on ``::`` (IPV6_V6ONLY 0) and a connection it accepted from ::1, both in the tree: bind() to
    ::1 would set IPV6_V6ONLY on the restored connection (the self-check would refuse it); it is bound to ``::``
    on the listener's port and takes ::1 from the route at connect."""
    lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lst.bind(("::", 0))
    lst.listen(4)
    p = socket.create_connection(("::1", lst.getsockname()[1]))
    s, _ = lst.accept()
    assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    p.sendall(b"to-the-tree")
    wait_until(lambda: s.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"to-the-tree", "data arrives")
    t = _hand_over(py_target, tmp_path, [
        (lst, {"name": "listener", "state": "LISTEN", "data": "", "local": ["::", lst.getsockname()[1]]}),
        (s, _spec("accepted", "ESTABLISHED", b"to-the-tree", False, "ok"))])
    dump(t.pid, tmp_path / "img", tcp_established=True)
    t.proc.returncode = -signal.SIGKILL
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS states round=2"
    p.settimeout(20)
    _read_all(p, b"after", False)
    p.close()
