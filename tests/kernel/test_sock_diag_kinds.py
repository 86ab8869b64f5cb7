"""sock_diag of UDP shutdown bits, packet and netlink sockets, and /proc/PID/net/raw: each read of a socket
set up here, checked against what was set (run as root: packet and raw sockets need CAP_NET_RAW)."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from ckpt.kernel import sock_diag as sd
from ckpt.procfs.netraw import raw_socket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="packet and raw sockets need root")


def _ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_inet_shutdown_of_connected_udp_sockets() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.connect(a.getsockname())
        a.connect(b.getsockname())
        b.shutdown(socket.SHUT_WR)
        assert sd.inet_shutdown(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, _ino(a)) == 0
        assert sd.inet_shutdown(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, _ino(b)) == 2  # SEND_SHUTDOWN


def test_packet_sockets_tell_protocol_interface_and_memberships() -> None:
    lo = socket.if_nametoindex("lo")
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0) as p:
        p.bind(("lo", 0x88B5))
        p.setsockopt(263, 8, 1)  # PACKET_AUXDATA
        for _ in range(3):
            p.setsockopt(263, 1, struct.pack("iHH8s", lo, 0, 6, bytes.fromhex("01005e0000fc")))  # multicast
        d = sd.packet_sockets()[_ino(p)]
    assert (d.type, d.num, d.ifindex, d.rx_ring, d.fanout) == (socket.SOCK_DGRAM, 0x88B5, lo, False, 0)
    assert d.flags & sd.PDI_RUNNING and d.flags & sd.PDI_AUXDATA
    assert d.memberships == (sd.PacketMembership(lo, 0, bytes.fromhex("01005e0000fc"), 3),)


def test_netlink_sockets_tell_port_groups_and_peer() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as n, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 2) as a, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 2) as b:
        n.bind((0, 1 | 4))
        n.setsockopt(270, 1, 33)  # NETLINK_ADD_MEMBERSHIP
        a.bind((0, 0))
        b.connect(a.getsockname())
        b.send(b"queued")
        got = sd.netlink_sockets()
        dn, da, db = got[_ino(n)], got[_ino(a)], got[_ino(b)]
        assert (dn.protocol, dn.portid, dn.groups) == (0, n.getsockname()[0], 1 | 4 | 1 << 32)
        assert da.rmem > 0
        assert (db.state, db.dst_portid) == (1, a.getsockname()[0])


def test_proc_net_raw_tells_a_raw_sockets_peer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 253) as r, socket.socket(socket.AF_INET, socket.SOCK_RAW, 253) as u:
        r.connect(("127.0.0.2", 0))
        line = raw_socket(os.getpid(), socket.AF_INET, _ino(r))
        assert line is not None and (line.remote, line.state) == (socket.inet_aton("127.0.0.2"), 1)
        assert raw_socket(os.getpid(), socket.AF_INET, _ino(u)).state == 7  # TCP_CLOSE: not connected
