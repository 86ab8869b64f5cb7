"""Socket options as getsockopt reports them: every option of the socket, IP, IPv6 and TCP levels a program may set.

A table, no policy: each :class:`SockOption` names the option, the size of its
value, which sockets have it, whether ``setsockopt`` takes back what
``getsockopt`` gives, and — for the few that change by themselves or that
reading disturbs — why they are not read at all (``skip``).  The restore's
self-check records every readable one (:func:`read_all`); the dump saves
those a program changed (:mod:`ckpt.resources.sockets`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .libc import libc

__all__ = ["SockOption", "OPTIONS", "label", "applies", "read_all", "filter_length", "get_filter", "sock_fprog",
           "attach_filter", "SO_BUF_LOCK", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE", "SO_ATTACH_FILTER", "BPF_INSN_SIZE"]

SOL_SOCKET, SOL_IP, SOL_TCP, SOL_IPV6 = socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_TCP, socket.IPPROTO_IPV6
SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_BUF_LOCK = 32, 33, 72
SO_ATTACH_FILTER = 26  # its getsockopt (SO_GET_FILTER) reads the classic program back
_SO_GET_FILTER = SO_ATTACH_FILTER
BPF_INSN_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_INET = frozenset({socket.AF_INET, socket.AF_INET6})
#: Multicast options: a stream socket neither has them nor takes them (EINVAL).
_NOT_STREAM = frozenset({socket.SOCK_DGRAM, socket.SOCK_RAW})


@dataclass(frozen=True)
class SockOption:
    """One option.  ``size``: bytes of its value (4: an int).  ``text``: the value is a NUL-padded name
    (TCP_CONGESTION, SO_BINDTODEVICE).  ``families``/``types``/``protocols``: the sockets that have it (empty:
    all).  ``settable``: setsockopt takes back the value getsockopt gives (else it only tells).  ``skip``:
    why it is not read at all."""

    level: int
    name: int
    label: str
    size: int = 4
    text: bool = False
    families: frozenset[int] = frozenset()
    types: frozenset[int] = frozenset()
    protocols: frozenset[int] = frozenset()
    settable: bool = True
    skip: str = ""


def _so(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    return SockOption(SOL_SOCKET, name, label, size, **kw)  # type: ignore[arg-type]


def _ip(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    return SockOption(SOL_IP, name, label, size, families=frozenset({socket.AF_INET}), **kw)  # type: ignore[arg-type]


def _ip46(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    """An IP option an IPv6 socket has too (``ipv6_setsockopt`` hands SOL_IP to ``ip_setsockopt``): it
    governs the socket's IPv4 (v4-mapped) traffic, or a flag both levels share (FREEBIND, TRANSPARENT)."""
    return SockOption(SOL_IP, name, label, size, families=_INET, **kw)  # type: ignore[arg-type]


def _ip6(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    return SockOption(SOL_IPV6, name, label, size, families=frozenset({socket.AF_INET6}), **kw)  # type: ignore[arg-type]


def _tcp(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    return SockOption(SOL_TCP, name, label, size, families=_INET, types=frozenset({socket.SOCK_STREAM}),
                      protocols=frozenset({0, socket.IPPROTO_TCP}), **kw)  # type: ignore[arg-type]


_IDENTITY = "what the socket is; made so by creating it"
_DYNAMIC = "changes by itself as traffic flows"

#: In the order a restore sets them: before bind (addresses, devices), buffers before their lock.
OPTIONS: tuple[SockOption, ...] = (
    _so(3, "SO_TYPE", settable=False), _so(38, "SO_PROTOCOL", settable=False), _so(39, "SO_DOMAIN", settable=False),
    _so(30, "SO_ACCEPTCONN", settable=False),
    _so(4, "SO_ERROR", skip="reading it clears the pending error"),
    _so(2, "SO_REUSEADDR"), _so(15, "SO_REUSEPORT"), _so(5, "SO_DONTROUTE"), _so(6, "SO_BROADCAST"),
    _so(9, "SO_KEEPALIVE"), _so(10, "SO_OOBINLINE"), _so(13, "SO_LINGER", 8),
    _so(16, "SO_PASSCRED"), _so(34, "SO_PASSSEC"), _so(76, "SO_PASSPIDFD"), _so(18, "SO_RCVLOWAT"),
    _so(19, "SO_SNDLOWAT", settable=False), _so(20, "SO_RCVTIMEO", 16), _so(21, "SO_SNDTIMEO", 16),
    _so(25, "SO_BINDTODEVICE", 16, text=True), _so(29, "SO_TIMESTAMP"), _so(35, "SO_TIMESTAMPNS"),
    _so(37, "SO_TIMESTAMPING"), _so(36, "SO_MARK"), _so(75, "SO_RCVMARK"), _so(40, "SO_RXQ_OVFL"),
    _so(41, "SO_WIFI_STATUS"), _so(42, "SO_PEEK_OFF"), _so(43, "SO_NOFCS"), _so(44, "SO_LOCK_FILTER"),
    _so(45, "SO_SELECT_ERR_QUEUE"), _so(46, "SO_BUSY_POLL"), _so(69, "SO_PREFER_BUSY_POLL"),
    _so(70, "SO_BUSY_POLL_BUDGET"), _so(47, "SO_MAX_PACING_RATE"), _so(60, "SO_ZEROCOPY"), _so(61, "SO_TXTIME", 8),
    _so(73, "SO_RESERVE_MEM"), _so(74, "SO_TXREHASH"),
    _so(8, "SO_RCVBUF"), _so(7, "SO_SNDBUF"), _so(SO_BUF_LOCK, "SO_BUF_LOCK"),
    _so(11, "SO_NO_CHECK"),
    _so(24, "SO_INCOMING_CPU", skip=_DYNAMIC), _so(56, "SO_INCOMING_NAPI_ID", skip=_DYNAMIC),
    _so(57, "SO_COOKIE", 8, skip="a number the kernel gives each socket"),
    _so(71, "SO_NETNS_COOKIE", 8, skip="a number the kernel gives each network namespace"),
    _so(55, "SO_MEMINFO", 36, skip=_DYNAMIC),
    _so(17, "SO_PEERCRED", 12, skip="the peer's identity, not an option (the README says what it becomes)"),
    _ip46(1, "IP_TOS"), _ip46(2, "IP_TTL"), _ip(3, "IP_HDRINCL"), _ip(6, "IP_RECVOPTS"), _ip(7, "IP_RETOPTS"),
    _ip(8, "IP_PKTINFO"), _ip46(10, "IP_MTU_DISCOVER"), _ip(11, "IP_RECVERR"), _ip(12, "IP_RECVTTL"),
    _ip(13, "IP_RECVTOS"), _ip46(15, "IP_FREEBIND"), _ip(18, "IP_PASSSEC"), _ip46(19, "IP_TRANSPARENT"),
    _ip46(21, "IP_MINTTL"), _ip(22, "IP_NODEFRAG"), _ip(23, "IP_CHECKSUM"), _ip46(24, "IP_BIND_ADDRESS_NO_PORT"),
    _ip(25, "IP_RECVFRAGSIZE"), _ip(26, "IP_RECVERR_RFC4884"), _ip(32, "IP_MULTICAST_IF", types=_NOT_STREAM),
    _ip(33, "IP_MULTICAST_TTL", types=_NOT_STREAM), _ip(34, "IP_MULTICAST_LOOP", types=_NOT_STREAM), _ip(49, "IP_MULTICAST_ALL", types=_NOT_STREAM),
    _ip46(51, "IP_LOCAL_PORT_RANGE"), _ip(14, "IP_MTU", skip="the path's MTU, learned from the route"),
    _ip6(26, "IPV6_V6ONLY"), _ip6(16, "IPV6_UNICAST_HOPS"), _ip6(17, "IPV6_MULTICAST_IF", types=_NOT_STREAM),
    _ip6(18, "IPV6_MULTICAST_HOPS", types=_NOT_STREAM), _ip6(19, "IPV6_MULTICAST_LOOP", types=_NOT_STREAM), _ip6(23, "IPV6_MTU_DISCOVER"),
    _ip6(25, "IPV6_RECVERR"), _ip6(29, "IPV6_MULTICAST_ALL", types=_NOT_STREAM), _ip6(49, "IPV6_RECVPKTINFO"),
    _ip6(51, "IPV6_RECVHOPLIMIT"), _ip6(62, "IPV6_DONTFRAG"), _ip6(66, "IPV6_RECVTCLASS"), _ip6(67, "IPV6_TCLASS"),
    _ip6(70, "IPV6_AUTOFLOWLABEL"), _ip6(73, "IPV6_MINHOPCOUNT"), _ip6(74, "IPV6_RECVORIGDSTADDR"),
    _ip6(75, "IPV6_TRANSPARENT"), _ip6(78, "IPV6_FREEBIND"), _ip6(24, "IPV6_MTU", skip="the path's MTU"),
    _tcp(1, "TCP_NODELAY"), _tcp(3, "TCP_CORK"), _tcp(4, "TCP_KEEPIDLE"), _tcp(5, "TCP_KEEPINTVL"),
    _tcp(6, "TCP_KEEPCNT"), _tcp(7, "TCP_SYNCNT"), _tcp(8, "TCP_LINGER2"), _tcp(9, "TCP_DEFER_ACCEPT"),
    _tcp(10, "TCP_WINDOW_CLAMP", skip="a connection computes its clamp from its buffers"), _tcp(13, "TCP_CONGESTION", 16, text=True), _tcp(16, "TCP_THIN_LINEAR_TIMEOUTS"),
    _tcp(17, "TCP_THIN_DUPACK"), _tcp(18, "TCP_USER_TIMEOUT"), _tcp(23, "TCP_FASTOPEN"),
    _tcp(25, "TCP_NOTSENT_LOWAT"), _tcp(27, "TCP_SAVE_SYN"), _tcp(30, "TCP_FASTOPEN_CONNECT"),
    _tcp(34, "TCP_FASTOPEN_NO_COOKIE"), _tcp(36, "TCP_INQ"), _tcp(37, "TCP_TX_DELAY"),
    _tcp(2, "TCP_MAXSEG", skip="a connection's segment size follows the path (a listener's is compared through "
                               "its connections)"),
    _tcp(12, "TCP_QUICKACK", skip=_DYNAMIC), _tcp(24, "TCP_TIMESTAMP", skip="a clock"),
    _so(12, "SO_PRIORITY"),  # after IP_TOS, which sets the priority too
)

SOL_RAW, SOL_ICMPV6, SOL_PACKET, SOL_NETLINK = 255, 58, 263, 270
_RAW = frozenset({socket.SOCK_RAW})


def _pk(name: int, label: str, size: int = 4, **kw: object) -> SockOption:
    return SockOption(SOL_PACKET, name, label, size, families=frozenset({socket.AF_PACKET}),
                      **kw)  # type: ignore[arg-type]


def _nl(name: int, label: str) -> SockOption:
    return SockOption(SOL_NETLINK, name, label, families=frozenset({socket.AF_NETLINK}))


#: Options of raw sockets (IPv4: ICMP_FILTER of an IPPROTO_ICMP socket; IPv6: the checksum offset, header
#: included, ICMPV6_FILTER), of packet sockets (SOL_PACKET) and of netlink sockets (SOL_NETLINK).
OPTIONS += (
    SockOption(SOL_RAW, 1, "ICMP_FILTER", families=frozenset({socket.AF_INET}), types=_RAW,
               protocols=frozenset({socket.IPPROTO_ICMP})),
    _ip6(7, "IPV6_CHECKSUM", types=_RAW), _ip6(36, "IPV6_HDRINCL", types=_RAW),
    SockOption(SOL_ICMPV6, 1, "ICMPV6_FILTER", 32, families=frozenset({socket.AF_INET6}), types=_RAW,
               protocols=frozenset({socket.IPPROTO_ICMPV6})),
    _pk(10, "PACKET_VERSION"), _pk(12, "PACKET_RESERVE"), _pk(8, "PACKET_AUXDATA"), _pk(9, "PACKET_ORIGDEV"),
    _pk(15, "PACKET_VNET_HDR"), _pk(24, "PACKET_VNET_HDR_SZ"), _pk(17, "PACKET_TIMESTAMP"), _pk(14, "PACKET_LOSS"),
    _pk(19, "PACKET_TX_HAS_OFF"), _pk(20, "PACKET_QDISC_BYPASS"), _pk(23, "PACKET_IGNORE_OUTGOING"),
    _pk(18, "PACKET_FANOUT", settable=False),  # refused at dump when set
    _pk(6, "PACKET_STATISTICS", 8, skip="reading it resets the counters"),
    _pk(21, "PACKET_ROLLOVER_STATS", 24, skip=_DYNAMIC),
    _nl(3, "NETLINK_PKTINFO"), _nl(4, "NETLINK_BROADCAST_ERROR"), _nl(5, "NETLINK_NO_ENOBUFS"),
    _nl(8, "NETLINK_LISTEN_ALL_NSID"), _nl(10, "NETLINK_CAP_ACK"), _nl(11, "NETLINK_EXT_ACK"),
    _nl(12, "NETLINK_GET_STRICT_CHK"),
)


_BY_NUMBER = {(o.level, o.name): o.label for o in OPTIONS} | {(SOL_SOCKET, SO_SNDBUFFORCE): "SO_SNDBUFFORCE",
                                                              (SOL_SOCKET, SO_RCVBUFFORCE): "SO_RCVBUFFORCE",
                                                              (SOL_SOCKET, SO_ATTACH_FILTER): "SO_ATTACH_FILTER"}


def label(level: int, name: int) -> str:
    """The option's name (``SO_PRIORITY``), or ``level/name`` for one the table does not have."""
    return _BY_NUMBER.get((level, name), f"{level}/{name}")


def applies(o: SockOption, family: int, stype: int, protocol: int) -> bool:
    return ((not o.families or family in o.families) and (not o.types or stype in o.types)
            and (not o.protocols or protocol in o.protocols))


def _value(o: SockOption, raw: bytes) -> str:
    if o.text:
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    if o.size == 4 and len(raw) == 4:
        return str(int.from_bytes(raw, "little", signed=True))
    return raw.hex()


def read_all(sock: socket.socket) -> Iterator[tuple[SockOption, bytes, str]]:
    """(option, raw value, its text) of every option of the table this socket has and the kernel answers.

    Buffer sizes are given as ``auto`` unless the program fixed them (SO_BUF_LOCK; on a kernel without it,
    as read): an unfixed one grows and shrinks with traffic.
    """
    family = sock.getsockopt(SOL_SOCKET, 39)
    stype = sock.getsockopt(SOL_SOCKET, 3)
    protocol = sock.getsockopt(SOL_SOCKET, 38)
    try:
        locks = sock.getsockopt(SOL_SOCKET, SO_BUF_LOCK)
    except OSError:
        locks = 3  # before 5.14: cannot tell, compared as read
    for o in OPTIONS:
        if o.skip or not applies(o, family, stype, protocol):
            continue
        try:
            raw = sock.getsockopt(o.level, o.name, o.size)
        except OSError:
            continue  # not an option this kernel or socket has
        text = _value(o, raw)
        if (o.label == "SO_SNDBUF" and not locks & 1) or (o.label == "SO_RCVBUF" and not locks & 2):
            text = "auto"
        yield o, raw, text


def filter_length(fd: int) -> int:
    """Instructions of the classic BPF filter attached to socket ``fd`` (SO_ATTACH_FILTER), 0 for none;
    -1 when there is one getsockopt will not show (an eBPF program, SO_ATTACH_BPF)."""
    n = ctypes.c_uint32(0)
    if libc.getsockopt(fd, SOL_SOCKET, _SO_GET_FILTER, None, ctypes.byref(n)) != 0:
        return -1 if ctypes.get_errno() == 13 else 0  # EACCES: a filter that is not classic
    return n.value


def get_filter(fd: int, count: int) -> bytes:
    """The classic BPF program attached to socket ``fd`` (``count`` instructions, :func:`filter_length`), as
    SO_ATTACH_FILTER took it.  SO_GET_FILTER counts its length in instructions, not bytes (``sk_get_filter``):
    a buffer of ``count`` bytes would be overrun, so the call is made here with the right one."""
    buf = ctypes.create_string_buffer(count * BPF_INSN_SIZE)
    n = ctypes.c_uint32(count)
    if libc.getsockopt(fd, SOL_SOCKET, _SO_GET_FILTER, buf, ctypes.byref(n)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getsockopt(SO_GET_FILTER): {os.strerror(err)}")
    return buf.raw[:n.value * BPF_INSN_SIZE]


def sock_fprog(count: int, address: int) -> bytes:
    """struct sock_fprog: u16 len (instructions), the pointer to them 8-aligned."""
    return struct.pack("=H6xQ", count, address)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER of ``program`` (classic BPF instructions) on ``sock``."""
    buf = ctypes.create_string_buffer(program, len(program))
    sock.setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, sock_fprog(len(program) // BPF_INSN_SIZE, ctypes.addressof(buf)))
