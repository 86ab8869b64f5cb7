"""Raw, packet and netlink sockets and UDP shutdown directions: each comes back and still works (run as root).

The scenario (tests/scenarios/py_rawsk.py) checks itself before the dump and after the restore: an ICMP
echo answered on a raw socket, a frame seen by packet sockets on lo, a route dump and a kept port id on a
netlink socket, the shutdown of UDP sockets as poll shows it, every option it set.  The restore's
self-check compares the kernel's account (inet, packet and netlink sections, every option) as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.reader import Image
from ckpt.image.pb import files_pb2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw and packet sockets need root")
K = files_pb2.FileEntry.Kind


def _started(py_target, kind: str, *args: str):  # noqa: ANN001, ANN202
    t = py_target("py_rawsk.py", kind, *args, stderr=subprocess.DEVNULL)
    t.ready(20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == f"PASS rawsk {kind} round=1"
    return t


#: What other programs of this machine may send to the scenario's sockets at any moment (an echo reply to a
#: ping of ::1 or 127.0.0.1 passes the ICMP filters; a link that changes is told to RTMGRP_LINK): let go if it
#: comes between the round before the dump and the dump (the self-check then lets "queued" differ, and the
#: scenario skips what it did not send).  Refusing such a queue is tested below.
_NOISE = {"raw": ("raw-queue",), "netlink": ("netlink-queue",)}


@pytest.mark.parametrize("kind,expected", [("udp", K.INET), ("raw", K.INET), ("packet", K.PACKET),
                                           ("netlink", K.NETLINK)])
def test_socket_kind_round_trips(py_target, tmp_path: Path, restored: list[int], kind: str,  # noqa: ANN001
                                 expected: int) -> None:
    t = _started(py_target, kind)
    api.dump(t.pid, tmp_path / "img", tolerate=_NOISE.get(kind, ()))
    t.proc.returncode = -signal.SIGKILL
    kinds = {e.kind for e in Image.open(tmp_path / "img").file_entries()}
    assert expected in kinds
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # with the self-check
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == f"PASS rawsk {kind} round=2"


@pytest.mark.parametrize("kind,extra,refusal", [
    ("packet", "ring", r"fd \d+ is a packet socket with a mapped ring \(PACKET_RX_RING\)"),
    ("packet", "fanout", r"fd \d+ is a packet socket in fanout group 16962 \(PACKET_FANOUT\)"),
    ("netlink", "queued", r"a netlink socket \(protocol 2\) with messages not yet read"),
])
def test_what_cannot_come_back_is_refused(py_target, tmp_path: Path, kind: str, extra: str,  # noqa: ANN001
                                          refusal: str) -> None:
    t = py_target("py_rawsk.py", kind, extra, stderr=subprocess.DEVNULL)
    t.ready(20)
    with pytest.raises(Unsupported, match=refusal):
        api.dump(t.pid, tmp_path / "img")
    assert t.proc.poll() is None and not (tmp_path / "img").exists()


def test_queued_netlink_messages_let_go_when_tolerated(py_target, tmp_path: Path,  # noqa: ANN001
                                                       restored: list[int]) -> None:
    t = py_target("py_rawsk.py", "netlink", "queued", stderr=subprocess.DEVNULL)
    t.ready(20)
    stats = api.dump(t.pid, tmp_path / "img", tolerate=frozenset({"netlink-queue"}))
    t.proc.returncode = -signal.SIGKILL
    assert any("--tolerate netlink-queue" in n for n in stats.notes)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # the self-check lets "queued" differ
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS rawsk netlink round=1"


def _forgetting(module, field: str):  # noqa: ANN001, ANN202
    """``module.describe`` that leaves ``field`` of the socket's record empty: a dump that loses it."""
    real = module.describe

    def describe(pid, fd, entry, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        real(pid, fd, entry, *args, **kw)
        getattr(entry, module.__name__.rsplit(".", 1)[-1]).ClearField(field)
    return describe


@pytest.mark.parametrize("kind,lose,difference", [
    ("udp", "shutdown", r"inet/\d+: shutdown: '\d' at the dump, absent after the restore"),
    ("packet", "memberships", r"packet/\d+: memberships: 'lo multicast 01005e0000fb x2; lo promisc - x1' at the dump, '' after the restore"),
    ("netlink", "groups", r"netlink/\d+: groups: '0x100000001' at the dump, '0x0' after the restore"),
])
def test_a_state_the_restore_lost_fails_the_self_check(py_target, tmp_path: Path,  # noqa: ANN001
                                                        monkeypatch: pytest.MonkeyPatch, kind: str, lose: str,
                                                        difference: str) -> None:
    """A deliberate loss: the restore is refused by its self-check, naming the socket and what differs."""
    from ckpt.resources import netlink, packet, sockets
    if kind == "udp":
        monkeypatch.setattr(sockets, "_shutdown", lambda inj, fd, bits: None)
    else:
        module = packet if kind == "packet" else netlink
        monkeypatch.setattr(module, "describe", _forgetting(module, lose))
    t = _started(py_target, kind)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    with pytest.raises(RestoreError, match=difference):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)


def test_a_packet_socket_on_an_interface_missing_here_fails_the_restore(py_target, tmp_path: Path,  # noqa: ANN001
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The interface is looked up by name where the process is restored: one that is not there is named."""
    from ckpt.resources import packet
    real = packet.describe

    def elsewhere(pid, fd, entry, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        real(pid, fd, entry, *args, **kw)
        if entry.packet.ifindex:
            entry.packet.ifname = "ckpt-none0"  # as if dumped where such an interface existed
    monkeypatch.setattr(packet, "describe", elsewhere)
    t = _started(py_target, "packet")
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    with pytest.raises(RestoreError, match=r"a packet socket was bound to interface 'ckpt-none0', which this "
                                           r"network namespace lacks: No such device"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
