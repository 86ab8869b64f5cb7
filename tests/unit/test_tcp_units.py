"""The pieces of --tcp-established that need no kernel: lock rules, addresses, repair options."""

from __future__ import annotations

import socket
import struct

import pytest

from ckpt.image.pb import files_pb2
from ckpt.kernel import tcp_repair as tr
from ckpt.kernel import tcp_segment as ts
from ckpt.resources import netlock, tcp
from ckpt.resources import tcp_states as st


def _sin(host: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)


def _sin6(host: str, port: int, scope: int = 0) -> bytes:
    return (struct.pack("<H", socket.AF_INET6) + struct.pack(">H", port) + bytes(4)
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("<I", scope))


def test_rule_matches_the_peers_packets_to_us() -> None:
    lk = netlock.Lock.of(socket.AF_INET, ("10.0.0.1", 80), ("10.0.0.2", 5555), "ckpt ab12 pid 7 fd 4")
    assert lk.rule() == ('ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 5555 tcp dport 80 meta mark != 0x636b7074 drop '
                         'comment "ckpt ab12 pid 7 fd 4"')
    assert str(lk) == "10.0.0.1:80 <- 10.0.0.2:5555"
    six = netlock.Lock.of(socket.AF_INET6, ("::1", 80), ("::1", 5555), "t")
    assert six.rule().startswith("ip6 saddr ::1 ip6 daddr ::1 tcp sport 5555 ") and str(six) == "[::1]:80 <- [::1]:5555"


def test_ipv4_mapped_connection_is_locked_as_ipv4() -> None:
    """An IPv6 socket talking to ::ffff:a.b.c.d sends IPv4 packets: the rule must match those."""
    lk = netlock.Lock.of(socket.AF_INET6, ("::ffff:127.0.0.1", 80), ("::ffff:127.0.0.2", 9), "t")
    assert lk.family == socket.AF_INET and lk.rule().startswith("ip saddr 127.0.0.2 ip daddr 127.0.0.1 tcp sport 9 ")


def test_tag_must_be_a_plain_comment() -> None:
    with pytest.raises(ValueError):
        netlock.Lock.of(socket.AF_INET, ("1.1.1.1", 1), ("2.2.2.2", 2), 'a"b')


def test_describe_both_ends() -> None:
    assert tcp.describe(socket.AF_INET, _sin("127.0.0.1", 6379), _sin("127.0.0.1", 40000)) == \
        "127.0.0.1:6379 -> 127.0.0.1:40000"
    assert tcp.describe(socket.AF_INET6, _sin6("::1", 80), _sin6("fe80::1", 9, scope=2)) == "[::1]:80 -> [fe80::1]:9"
    assert tcp._addr(socket.AF_INET6, _sin6("fe80::1", 9, scope=2)) == ("fe80::1", 9, 0, 2)


def test_repair_options_follow_what_was_negotiated() -> None:
    t = files_pb2.TcpRepair(mss=1460, options=tr.TCPI_OPT_WSCALE | tr.TCPI_OPT_SACK | tr.TCPI_OPT_TIMESTAMPS,
                            snd_wscale=7, rcv_wscale=9)
    assert tcp._repair_options(t) == [(tr.TCPOPT_MAXSEG, 1460), (tr.TCPOPT_WINDOW, 7 | 9 << 16),
                                      (tr.TCPOPT_SACK_PERM, 0), (tr.TCPOPT_TIMESTAMP, 0)]
    assert tcp._repair_options(files_pb2.TcpRepair(mss=536)) == [(tr.TCPOPT_MAXSEG, 536)]


def test_struct_sizes_match_the_uapi() -> None:
    import ctypes
    assert ctypes.sizeof(tr.tcp_repair_window) == 20 and ctypes.sizeof(tr.tcp_repair_opt) == 8


def test_a_made_up_segment_has_a_valid_checksum() -> None:
    """The Internet checksum over the pseudo-header and the TCP header of a made-up segment folds to zero."""
    for family, src, dst, iplen in ((socket.AF_INET, "10.0.0.2", "10.0.0.1", 20),
                                    (socket.AF_INET6, "2001:db8::2", "2001:db8::1", 40)):
        pkt = ts.segment(family, (src, 5555), (dst, 80), 0xFFFFFFF0, 7, ts.TCP_FIN | ts.TCP_ACK, 70000)
        tcp = pkt[iplen:]
        s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
        pseudo = s + d + (struct.pack("!BBH", 0, 6, len(tcp)) if family == socket.AF_INET
                          else struct.pack("!I3xB", len(tcp), 6))
        assert ts._checksum(pseudo + tcp) == 0
        assert struct.unpack("!HHIIBBH", tcp[:16]) == (5555, 80, 0xFFFFFFF0, 7, 0x50, 0x11, 0xFFFF)


def test_which_fins_each_closing_state_counts() -> None:
    assert st.fins(st.ESTABLISHED) == st.Fins(False, False, False)
    assert st.fins(st.FIN_WAIT1) == st.Fins(True, False, False)
    assert st.fins(st.FIN_WAIT2) == st.Fins(True, True, False)
    assert st.fins(st.CLOSING) == st.Fins(True, False, True)
    assert st.fins(st.CLOSE_WAIT) == st.Fins(False, False, True)
    assert st.fins(st.LAST_ACK) == st.Fins(True, False, True)
    assert st.refusal(st.SYN_SENT, False) and st.refusal(st.CLOSING, True)
    assert st.refusal(st.LAST_ACK, True) is None and st.refusal(st.FIN_WAIT1, True) is None
