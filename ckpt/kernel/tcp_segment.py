"""A TCP segment made up and sent through a raw socket (IP_HDRINCL / IPV6_HDRINCL), to a socket of this host.

TCP_REPAIR sets sequence numbers and queues, but nothing in it records that
the peer's FIN arrived, or that the peer acknowledged ours: the kernel only
learns that from a segment.  A restore that must bring a connection back in
CLOSE_WAIT, LAST_ACK, CLOSING or FIN_WAIT2 sends that segment itself, in the
peer's name, to the restored socket (CRIU does the same with libnet).

The whole packet is built here (IPv4 or IPv6 header, TCP header with its
checksum, no options), so its source can be any address, the peer's: the
kernel routes a packet for a local address through the loopback device,
which keeps the socket's mark (SO_MARK) on it, so a network lock can let it
through (:data:`ckpt.resources.netlock.REPAIR_MARK`).  Needs CAP_NET_RAW.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["TCP_FIN", "TCP_SYN", "TCP_RST", "TCP_PSH", "TCP_ACK", "IPV6_HDRINCL", "segment", "send_segment"]

# TCP header flags (include/net/tcp.h TCPHDR_*)
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IPV6_HDRINCL = 36  # include/uapi/linux/in6.h (since 4.5)
_SO_MARK = 36
_TCP = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, data offset, flags, window, checksum, urgent pointer


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(family: int, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
            window: int) -> bytes:
    """The IP packet of a TCP segment without data or options from ``src`` to ``dst`` ((host, port) each)."""
    s, d = socket.inet_pton(family, src[0]), socket.inet_pton(family, dst[0])
    tcp = _TCP.pack(src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, min(window, 0xFFFF), 0, 0)
    if family == socket.AF_INET:
        pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0) + s + d
    else:
        pseudo = s + d + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + s + d
    c = _checksum(pseudo + tcp)
    return ip + tcp[:16] + struct.pack("!H", c) + tcp[18:]


def send_segment(family: int, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
                 window: int, mark: int) -> None:
    """Send :func:`segment` through a raw socket marked ``mark``; OSError as the kernel gives it."""
    with socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW) as raw:
        if family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
        raw.setsockopt(socket.SOL_SOCKET, _SO_MARK, mark)
        raw.sendto(segment(family, src, dst, seq, ack, flags, window), (dst[0], 0))
