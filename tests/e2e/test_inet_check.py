"""The self-check's account of inet sockets (``inet/N``: TCP state, addresses, queues, a listener's backlog and
waiting connections, UDP datagrams waiting): a restore that gets one wrong is refused; one the user let go at
the dump (``--tolerate listen-queue``, ``--tolerate udp-queue``, ``--tcp-close``) is allowed exactly that."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.reader import Image
from ckpt.resources import netlock, sockets, tcp

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _inet_entries(img: Path) -> list:  # noqa: ANN401
    return [e.inet for e in Image.open(img).file_entries() if e.HasField("inet") and e.inet.family]


def test_a_receive_queue_short_of_a_byte_is_refused(py_target, tmp_path: Path,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberate loss: the restore puts an established connection's receive queue back without its first
    byte (a sequence number later, so the kernel takes it)."""
    t = py_target("py_sockopts.py", stderr=subprocess.DEVNULL)
    t.ready(20)
    api.dump(t.pid, tmp_path / "img", tcp_established=True)
    t.proc.returncode = -signal.SIGKILL
    real = tcp._rebuild

    def short(sk, i, *args):  # noqa: ANN001, ANN002, ANN202
        if i.tcp.recv_queue:  # its first byte gone: the queue starts one sequence number later
            i = type(i).FromString(i.SerializeToString())
            i.tcp.recv_queue = i.tcp.recv_queue[1:]
        return real(sk, i, *args)

    monkeypatch.setattr(tcp, "_rebuild", short)
    with pytest.raises(RestoreError, match=r"came back different from the dump: inet/\d+: inq: '16' at the dump, "
                                           r"'15' after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    tags = {i.tcp.lock for i in _inet_entries(tmp_path / "img")} - {""}
    assert tags and not tags & netlock.locked().keys()  # the refused restore removed its connections' locks


def test_a_listener_with_another_backlog_is_refused(py_target, tmp_path: Path,  # noqa: ANN001
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberate loss: the restore gives a TCP listener's listen() another backlog than the program's (8)."""
    t = py_target("py_queues.py", stderr=subprocess.DEVNULL)
    t.expect("READY", timeout=20)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    monkeypatch.setattr(sockets, "backlog_of", lambda sock: 9)
    with pytest.raises(RestoreError, match=r"inet/\d+: backlog: '8' at the dump, '9' after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)


def test_what_the_dump_was_told_to_lose_is_allowed_exactly_that(py_target, tmp_path: Path,  # noqa: ANN001
                                                                restored: list[int]) -> None:
    """A listener's waiting connection and a UDP socket's datagram let go at the dump: the image says so and
    the restore passes the check without them, everything else of both sockets compared (and a TCP socket
    only bound comes back bound: it came back unbound before the check saw its address)."""
    t = py_target("py_queues.py", stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    client = socket.create_connection(("127.0.0.1", int(ports["tcp"])))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"hello", ("127.0.0.1", int(ports["udp"])))
        api.dump(t.pid, tmp_path / "img", tolerate=["listen-queue", "udp-queue"])
    t.proc.returncode = -signal.SIGKILL
    client.close()
    assert sorted((i.type, i.state, i.queue_lost) for i in _inet_entries(tmp_path / "img")) == [
        (socket.SOCK_STREAM, 7, False), (socket.SOCK_STREAM, 10, True), (socket.SOCK_DGRAM, 0, True)]  # CLOSE, LISTEN
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(r.pid, signal.SIGUSR1)
    assert t.expect("QUEUES", timeout=20) == "QUEUES accepted=0 datagrams="


def test_a_udp_datagram_lost_without_the_image_saying_so_is_refused(py_target, tmp_path: Path,  # noqa: ANN001
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The check allows exactly what the image says was let go: a dump that lost a datagram and did not
    record it (its record of the loss removed on purpose, and the dump's cross-check that would refuse that
    turned off) makes the restore refuse."""
    t = py_target("py_queues.py", stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    real = sockets.describe

    def unrecorded(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kw)
        args[2].inet.queue_lost = False

    monkeypatch.setattr(sockets, "describe", unrecorded)
    monkeypatch.setattr(sockets, "account_agrees", lambda *args: None)  # the dump's own cross-check (below) off
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"hello", ("127.0.0.1", int(ports["udp"])))
        api.dump(t.pid, tmp_path / "img", tolerate=["udp-queue"])
    t.proc.returncode = -signal.SIGKILL
    with pytest.raises(RestoreError, match=r"inet/\d+: queued: 'yes' at the dump, 'no' after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)


def test_a_datagram_arriving_during_the_dump_is_refused_there(py_target, tmp_path: Path,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A datagram the socket's record did not see (as one arriving after it was read) but the account, read
    last, does: the restore would refuse, so the dump does, and the target runs on."""
    t = py_target("py_queues.py", stderr=subprocess.DEVNULL)
    ports = _fields(t.expect("READY", timeout=20))
    real = sockets.peek
    monkeypatch.setattr(sockets, "peek", lambda pid, fd: (lambda p, o: (dataclasses.replace(p, queued=False), o))(
        *real(pid, fd)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"hello", ("127.0.0.1", int(ports["udp"])))
        with pytest.raises(Unsupported, match=r"process \d+: fd \d+: a datagram queued on it arrived while it was "
                                              r"being dumped"):
            api.dump(t.pid, tmp_path / "img")
    assert t.alive() and not (tmp_path / "img").exists()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("QUEUES", timeout=20) == "QUEUES accepted=0 datagrams=hello"
