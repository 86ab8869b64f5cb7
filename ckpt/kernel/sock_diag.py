"""sock_diag netlink (NETLINK_SOCK_DIAG): the listen backlog of sockets, and all of a unix socket, by inode.

The backlog a program gave to ``listen()`` (``sk_max_ack_backlog``, already
capped at ``net.core.somaxconn``) is not readable with getsockopt; sock_diag
reports it — it is what ``ss -l`` prints as Send-Q:

* inet (``include/uapi/linux/inet_diag.h``): a ``SOCK_DIAG_BY_FAMILY`` dump with
  an ``inet_diag_req_v2`` for one family and protocol; a listener's
  ``inet_diag_msg.idiag_wqueue`` is its backlog.  For listeners the kernel
  compares ``id.idiag_sport`` itself, so a port narrows the dump to it.
* unix (``include/uapi/linux/unix_diag.h``): a ``unix_diag_req`` with
  ``UDIAG_SHOW_RQLEN``; a listener's ``UNIX_DIAG_RQLEN`` attribute is
  (queued connections, backlog).  With ``udiag_ino`` and no dump flag the
  kernel looks the one socket up.  :func:`unix_sockets` asks for every
  attribute: name, path inode, peer, the clients waiting in a listener's
  accept queue, queue lengths, shutdown — what links unix sockets to their
  peers (:class:`UnixDiag` says what each means, as measured on 6.18).

sock_diag sees every socket of the caller's network namespace, whichever
process owns it, so the dumper asks about the target's sockets directly.
Each call opens its own netlink socket: no state is kept between calls.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "NETLINK_SOCK_DIAG", "SOCK_DIAG_BY_FAMILY", "TCP_LISTEN", "UDIAG_SHOW_RQLEN", "UNIX_DIAG_RQLEN",
    "INET_DIAG_NOCOOKIE", "INET_DIAG_REQ_PROTOCOL", "nlmsghdr", "nlattr", "inet_diag_sockid", "inet_diag_req_v2",
    "inet_diag_msg", "unix_diag_req", "unix_diag_msg", "unix_diag_rqlen", "listen_backlogs", "UnixDiag", "unix_sockets",
]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
#: include/net/tcp_states.h; unix_diag numbers a unix listener's state the same way.
TCP_LISTEN = 10
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
#: Request attribute: the protocol as a u32, for those that do not fit sdiag_protocol (IPPROTO_MPTCP 262).
INET_DIAG_REQ_PROTOCOL = 3
#: Bigger than any netlink dump skb (the kernel caps them at 32 KiB), so a read never truncates.
_RECV_SIZE = 1 << 17
#: A netlink reply is immediate; a bound on the wait keeps a frozen target from waiting on a kernel bug.
_TIMEOUT = 5.0
_seq = itertools.count(1)


class nlmsghdr(ctypes.Structure):
    _fields_ = [("nlmsg_len", ctypes.c_uint32), ("nlmsg_type", ctypes.c_uint16), ("nlmsg_flags", ctypes.c_uint16),
                ("nlmsg_seq", ctypes.c_uint32), ("nlmsg_pid", ctypes.c_uint32)]


class nlattr(ctypes.Structure):
    _fields_ = [("nla_len", ctypes.c_uint16), ("nla_type", ctypes.c_uint16)]


class inet_diag_sockid(ctypes.Structure):
    """Ports and addresses are in network byte order."""

    _fields_ = [("idiag_sport", ctypes.c_uint16), ("idiag_dport", ctypes.c_uint16),
                ("idiag_src", ctypes.c_uint32 * 4), ("idiag_dst", ctypes.c_uint32 * 4),
                ("idiag_if", ctypes.c_uint32), ("idiag_cookie", ctypes.c_uint32 * 2)]


class inet_diag_req_v2(ctypes.Structure):
    _fields_ = [("sdiag_family", ctypes.c_uint8), ("sdiag_protocol", ctypes.c_uint8), ("idiag_ext", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("idiag_states", ctypes.c_uint32), ("id", inet_diag_sockid)]


class inet_diag_msg(ctypes.Structure):
    _fields_ = [("idiag_family", ctypes.c_uint8), ("idiag_state", ctypes.c_uint8), ("idiag_timer", ctypes.c_uint8),
                ("idiag_retrans", ctypes.c_uint8), ("id", inet_diag_sockid), ("idiag_expires", ctypes.c_uint32),
                ("idiag_rqueue", ctypes.c_uint32), ("idiag_wqueue", ctypes.c_uint32), ("idiag_uid", ctypes.c_uint32),
                ("idiag_inode", ctypes.c_uint32)]


class unix_diag_req(ctypes.Structure):
    _fields_ = [("sdiag_family", ctypes.c_uint8), ("sdiag_protocol", ctypes.c_uint8), ("pad", ctypes.c_uint16),
                ("udiag_states", ctypes.c_uint32), ("udiag_ino", ctypes.c_uint32), ("udiag_show", ctypes.c_uint32),
                ("udiag_cookie", ctypes.c_uint32 * 2)]


class unix_diag_msg(ctypes.Structure):
    _fields_ = [("udiag_family", ctypes.c_uint8), ("udiag_type", ctypes.c_uint8), ("udiag_state", ctypes.c_uint8),
                ("pad", ctypes.c_uint8), ("udiag_ino", ctypes.c_uint32), ("udiag_cookie", ctypes.c_uint32 * 2)]


class unix_diag_rqlen(ctypes.Structure):
    _fields_ = [("udiag_rqueue", ctypes.c_uint32), ("udiag_wqueue", ctypes.c_uint32)]


def _align(n: int) -> int:
    return (n + 3) & ~3


def _request(req: ctypes.Structure, *, dump: bool, call: str, attrs: bytes = b"") -> Iterator[bytes]:
    """Send one SOCK_DIAG_BY_FAMILY request; yield the body of each reply message.

    An error (NLMSG_ERROR, or a dump's NLMSG_DONE carrying one) raises
    ``OSError`` named after ``call``; ENOENT there means no sock_diag handler
    for the family/protocol (or, for an exact lookup, no such socket).
    """
    seq = next(_seq)
    hdr = nlmsghdr(ctypes.sizeof(nlmsghdr) + ctypes.sizeof(req) + len(attrs), SOCK_DIAG_BY_FAMILY,
                   NLM_F_REQUEST | (NLM_F_DUMP if dump else 0), seq, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as s:
        s.settimeout(_TIMEOUT)
        s.sendto(bytes(hdr) + bytes(req) + attrs, (0, 0))
        while True:
            data, _, flags, _ = s.recvmsg(_RECV_SIZE)
            if flags & socket.MSG_TRUNC:
                raise OSError(errno.EMSGSIZE, f"{call}: netlink reply truncated")
            off = 0
            while off + ctypes.sizeof(nlmsghdr) <= len(data):
                h = nlmsghdr.from_buffer_copy(data, off)
                if h.nlmsg_len < ctypes.sizeof(nlmsghdr) or off + h.nlmsg_len > len(data):
                    raise OSError(errno.EBADMSG, f"{call}: malformed netlink message")
                body = data[off + ctypes.sizeof(nlmsghdr):off + h.nlmsg_len]
                off += _align(h.nlmsg_len)
                if h.nlmsg_seq != seq:
                    continue
                if h.nlmsg_type in (NLMSG_DONE, NLMSG_ERROR):
                    # Both carry an int: 0, or the negative errno a dump or a request failed with.
                    err = -ctypes.c_int32.from_buffer_copy(body[:4].ljust(4, b"\0")).value
                    if err:
                        raise OSError(err, f"{call}: {os.strerror(err)}")
                    return
                yield body
                if not dump:
                    return  # an exact lookup answers with one message and no NLMSG_DONE


def _attrs(body: bytes, start: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = _align(start)
    while off + ctypes.sizeof(nlattr) <= len(body):
        a = nlattr.from_buffer_copy(body, off)
        if a.nla_len < ctypes.sizeof(nlattr):
            break
        out[a.nla_type & 0x3FFF] = body[off + ctypes.sizeof(nlattr):off + a.nla_len]  # minus NLA_F_* flags
        off += _align(a.nla_len)
    return out


def _inet_backlogs(family: int, protocol: int, port: int) -> dict[int, int]:
    wide = protocol > 0xFF  # sdiag_protocol is a u8: the kernel reads the attribute instead
    req = inet_diag_req_v2(sdiag_family=family, sdiag_protocol=0 if wide else protocol, idiag_states=1 << TCP_LISTEN)
    req.id.idiag_sport = socket.htons(port)
    req.id.idiag_cookie[0] = req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE
    attrs = b""
    if wide:
        attrs = bytes(nlattr(ctypes.sizeof(nlattr) + 4, INET_DIAG_REQ_PROTOCOL)) + bytes(ctypes.c_uint32(protocol))
    out: dict[int, int] = {}
    call = f"sock_diag(family={family}, protocol={protocol}, port={port})"
    for body in _request(req, dump=True, call=call, attrs=attrs):
        m = inet_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(inet_diag_msg), b"\0"))
        if m.idiag_state == TCP_LISTEN and m.idiag_inode:
            out[m.idiag_inode] = m.idiag_wqueue
    return out


def _unix_backlogs(inode: int) -> dict[int, int]:
    req = unix_diag_req(sdiag_family=socket.AF_UNIX, udiag_states=1 << TCP_LISTEN, udiag_ino=inode,
                        udiag_show=UDIAG_SHOW_RQLEN)
    req.udiag_cookie[0] = req.udiag_cookie[1] = INET_DIAG_NOCOOKIE
    out: dict[int, int] = {}
    call = f"sock_diag(family=AF_UNIX, inode={inode})" if inode else "sock_diag(family=AF_UNIX)"
    try:
        for body in _request(req, dump=not inode, call=call):
            m = unix_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(unix_diag_msg), b"\0"))
            rqlen = _attrs(body, ctypes.sizeof(unix_diag_msg)).get(UNIX_DIAG_RQLEN)
            if m.udiag_state == TCP_LISTEN and rqlen is not None and len(rqlen) >= ctypes.sizeof(unix_diag_rqlen):
                out[m.udiag_ino] = unix_diag_rqlen.from_buffer_copy(rqlen).udiag_wqueue
    except OSError as exc:
        if inode and exc.errno == errno.ENOENT:
            return {}  # the exact lookup found no socket of that inode
        raise
    return out


def listen_backlogs(family: int, protocol: int = 0, *, port: int = 0, inode: int = 0) -> dict[int, int]:
    """Listening sockets of this network namespace → their backlog, keyed by socket inode.

    ``AF_INET`` / ``AF_INET6``: one dump of the listeners of ``protocol``
    (``IPPROTO_TCP``, ``IPPROTO_MPTCP``), only those on local ``port`` if
    non-zero.  ``AF_UNIX``: every unix listener, or only the socket of
    ``inode`` (an exact lookup; empty if it is not there or not listening).
    Raises ``OSError`` when the kernel refuses (ENOENT: no sock_diag support
    for that family or protocol).
    """
    if family in (socket.AF_INET, socket.AF_INET6):
        return _inet_backlogs(family, protocol, port)
    if family == socket.AF_UNIX:
        return _unix_backlogs(inode)
    raise OSError(errno.EAFNOSUPPORT, f"sock_diag(family={family}): {os.strerror(errno.EAFNOSUPPORT)}")


# --- unix sockets in full ----------------------------------------------------------------------

UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_SHUTDOWN = 0, 1, 2, 3, 6
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS = 0x1, 0x2, 0x4, 0x8
_UDIAG_SHOW_ALL = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN


@dataclass(frozen=True)
class UnixDiag:
    """One unix socket as unix_diag reports it (``net/unix/diag.c``).

    ``peer``: the inode of the connected peer; None when not connected, 0 when
    connected to a socket that has no inode any more (the peer was closed) or
    never had one yet (a connection still in a listener's accept queue: the
    server side is created at accept).  ``icons``: for a listener, the inode
    of the *client* of each connection in its accept queue, in queue order (0
    for a client already closed).  ``rqueue``/``wqueue``: a listener's queued
    connections and backlog; otherwise the bytes queued to be read (stream,
    seqpacket: all of them; dgram: the first message only) and the memory
    this socket's sent data still holds (truesize, anywhere it is queued).
    ``shutdown``: the socket's own RCV_SHUTDOWN (1) / SEND_SHUTDOWN (2) bits.
    ``name``: the bound name (an accepted socket has its listener's); an
    abstract name starts with its NUL, a path has none at the end.
    """

    ino: int
    type: int
    state: int
    name: bytes | None
    peer: int | None
    icons: tuple[int, ...]
    rqueue: int
    wqueue: int
    shutdown: int
    vfs: tuple[int, int] | None  # (st_dev, st_ino) of the bound path's socket file


def _unix_diag(body: bytes) -> UnixDiag:
    m = unix_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(unix_diag_msg), b"\0"))
    a = _attrs(body, ctypes.sizeof(unix_diag_msg))
    rq = (unix_diag_rqlen.from_buffer_copy(a[UNIX_DIAG_RQLEN]) if len(a.get(UNIX_DIAG_RQLEN, b"")) >= 8
          else unix_diag_rqlen())
    icons = a.get(UNIX_DIAG_ICONS, b"")
    vfs = a.get(UNIX_DIAG_VFS)
    name = a.get(UNIX_DIAG_NAME)
    if name and name[0] != 0:
        name = name.split(b"\0", 1)[0]  # a path comes with its NUL: as getsockname gives it
    return UnixDiag(
        ino=m.udiag_ino, type=m.udiag_type, state=m.udiag_state, name=name,
        peer=int.from_bytes(a[UNIX_DIAG_PEER][:4], "little") if UNIX_DIAG_PEER in a else None,
        icons=tuple(int.from_bytes(icons[i:i + 4], "little") for i in range(0, len(icons) - 3, 4)),
        rqueue=rq.udiag_rqueue, wqueue=rq.udiag_wqueue,
        shutdown=a[UNIX_DIAG_SHUTDOWN][0] if a.get(UNIX_DIAG_SHUTDOWN) else 0,
        vfs=(_user_dev(int.from_bytes(vfs[4:8], "little")), int.from_bytes(vfs[:4], "little"))
        if vfs and len(vfs) >= 8 else None)


def _user_dev(kdev: int) -> int:
    """A kernel-internal dev_t (major << 20 | minor), as unix_diag reports it, in st_dev's encoding."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def unix_sockets(inode: int = 0, *, states: int = 0xFFFFFFFF) -> dict[int, UnixDiag]:
    """Unix sockets of this network namespace by inode: every one in ``states`` (a mask of 1 << TCP_*),
    or just the socket of ``inode`` (an exact lookup; empty if there is none)."""
    req = unix_diag_req(sdiag_family=socket.AF_UNIX, udiag_states=states, udiag_ino=inode, udiag_show=_UDIAG_SHOW_ALL)
    req.udiag_cookie[0] = req.udiag_cookie[1] = INET_DIAG_NOCOOKIE
    call = f"sock_diag(family=AF_UNIX, inode={inode})" if inode else "sock_diag(family=AF_UNIX)"
    out: dict[int, UnixDiag] = {}
    try:
        for body in _request(req, dump=not inode, call=call):
            d = _unix_diag(body)
            out[d.ino] = d
    except OSError as exc:
        if inode and exc.errno == errno.ENOENT:
            return {}
        raise
    return out


# --- inet: the shutdown bits of one socket ----------------------------------------------------

INET_DIAG_SHUTDOWN = 8
#: inet_diag_req_raw: a raw socket's request names its protocol in the byte after idiag_ext.
IPPROTO_RAW = 255


def inet_shutdown(family: int, stype: int, protocol: int, inode: int) -> int | None:
    """The RCV_SHUTDOWN (1) / SEND_SHUTDOWN (2) bits of the UDP or raw socket of ``inode`` (INET_DIAG_SHUTDOWN,
    which every reply carries); None when it is not found.  getsockopt cannot read them.  A UDP dump asks
    ``IPPROTO_UDP``; a raw one ``IPPROTO_RAW`` with the socket's own protocol in ``sdiag_raw_protocol``
    (``inet_diag_req_raw``, raw_diag).  Raises OSError when the kernel has no handler (ENOENT)."""
    raw = stype == socket.SOCK_RAW
    req = inet_diag_req_v2(sdiag_family=family, sdiag_protocol=IPPROTO_RAW if raw else socket.IPPROTO_UDP,
                           idiag_states=0xFFFFFFFF)
    if raw:
        req.pad = protocol  # sdiag_raw_protocol
    req.id.idiag_cookie[0] = req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE
    call = f"sock_diag(family={family}, type={stype}, protocol={protocol})"
    for body in _request(req, dump=True, call=call):
        m = inet_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(inet_diag_msg), b"\0"))
        if m.idiag_inode == inode:
            bits = _attrs(body, ctypes.sizeof(inet_diag_msg)).get(INET_DIAG_SHUTDOWN, b"\0")
            return bits[0] if bits else 0
    return None


# --- packet sockets (net/packet/diag.c) --------------------------------------------------------

PACKET_SHOW_INFO, PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG, PACKET_SHOW_FANOUT = 0x1, 0x2, 0x4, 0x8
PACKET_SHOW_MEMINFO, PACKET_SHOW_FILTER = 0x10, 0x20
PACKET_DIAG_INFO, PACKET_DIAG_MCLIST, PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING = 0, 1, 2, 3
PACKET_DIAG_FANOUT, PACKET_DIAG_MEMINFO, PACKET_DIAG_FILTER = 4, 6, 7
PDI_RUNNING, PDI_AUXDATA, PDI_ORIGDEV, PDI_VNETHDR, PDI_LOSS = 0x1, 0x2, 0x4, 0x8, 0x10
#: SK_MEMINFO_RMEM_ALLOC: the first u32 of a MEMINFO attribute, the memory the receive queue holds.
SK_MEMINFO_RMEM_ALLOC = 0


class packet_diag_req(ctypes.Structure):
    _fields_ = [("sdiag_family", ctypes.c_uint8), ("sdiag_protocol", ctypes.c_uint8), ("pad", ctypes.c_uint16),
                ("pdiag_ino", ctypes.c_uint32), ("pdiag_show", ctypes.c_uint32), ("pdiag_cookie", ctypes.c_uint32 * 2)]


class packet_diag_msg(ctypes.Structure):
    _fields_ = [("pdiag_family", ctypes.c_uint8), ("pdiag_type", ctypes.c_uint8), ("pdiag_num", ctypes.c_uint16),
                ("pdiag_ino", ctypes.c_uint32), ("pdiag_cookie", ctypes.c_uint32 * 2)]


class packet_diag_info(ctypes.Structure):
    _fields_ = [("pdi_index", ctypes.c_uint32), ("pdi_version", ctypes.c_uint32), ("pdi_reserve", ctypes.c_uint32),
                ("pdi_copy_thresh", ctypes.c_uint32), ("pdi_tstamp", ctypes.c_uint32), ("pdi_flags", ctypes.c_uint32)]


class packet_diag_mclist(ctypes.Structure):
    _fields_ = [("pdmc_index", ctypes.c_uint32), ("pdmc_count", ctypes.c_uint32), ("pdmc_type", ctypes.c_uint16),
                ("pdmc_alen", ctypes.c_uint16), ("pdmc_addr", ctypes.c_uint8 * 32)]


class packet_diag_ring(ctypes.Structure):
    _fields_ = [("pdr_block_size", ctypes.c_uint32), ("pdr_block_nr", ctypes.c_uint32),
                ("pdr_frame_size", ctypes.c_uint32), ("pdr_frame_nr", ctypes.c_uint32),
                ("pdr_retire_tmo", ctypes.c_uint32), ("pdr_sizeof_priv", ctypes.c_uint32),
                ("pdr_features", ctypes.c_uint32)]


@dataclass(frozen=True)
class PacketMembership:
    """One PACKET_ADD_MEMBERSHIP (struct packet_mclist): interface, PACKET_MR_* type, address, times added."""

    ifindex: int
    type: int
    address: bytes
    count: int


@dataclass(frozen=True)
class PacketDiag:
    """One packet socket as packet_diag reports it.  ``num``: the bound protocol (po->num, host order: what
    the socket receives); ``ifindex``: the bound interface (0: every one); ``flags``: PDI_*; ``fanout``: the
    PACKET_FANOUT value (0: none); ``rx_ring`` / ``tx_ring``: whether a mapped ring is set up; ``rmem``: bytes
    its receive queue holds."""

    ino: int
    type: int
    num: int
    ifindex: int
    version: int
    reserve: int
    copy_thresh: int
    tstamp: int
    flags: int
    memberships: tuple[PacketMembership, ...]
    rx_ring: bool
    tx_ring: bool
    fanout: int
    filter: bool
    rmem: int


def packet_sockets() -> dict[int, PacketDiag]:
    """Every packet socket of this network namespace, by inode (packet_diag answers dumps only)."""
    req = packet_diag_req(sdiag_family=socket.AF_PACKET,
                          pdiag_show=PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT
                          | PACKET_SHOW_MEMINFO | PACKET_SHOW_FILTER)
    req.pdiag_cookie[0] = req.pdiag_cookie[1] = INET_DIAG_NOCOOKIE
    out: dict[int, PacketDiag] = {}
    for body in _request(req, dump=True, call="sock_diag(family=AF_PACKET)"):
        m = packet_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(packet_diag_msg), b"\0"))
        a = _attrs(body, ctypes.sizeof(packet_diag_msg))
        info = packet_diag_info.from_buffer_copy(a.get(PACKET_DIAG_INFO, b"").ljust(ctypes.sizeof(packet_diag_info),
                                                                                    b"\0"))
        raw, size = a.get(PACKET_DIAG_MCLIST, b""), ctypes.sizeof(packet_diag_mclist)
        mcs = []
        for off in range(0, len(raw) - size + 1, size):
            mc = packet_diag_mclist.from_buffer_copy(raw, off)
            mcs.append(PacketMembership(mc.pdmc_index, mc.pdmc_type, bytes(mc.pdmc_addr)[:mc.pdmc_alen],
                                        mc.pdmc_count))
        fan = a.get(PACKET_DIAG_FANOUT, b"")
        mem = a.get(PACKET_DIAG_MEMINFO, b"")
        out[m.pdiag_ino] = PacketDiag(
            ino=m.pdiag_ino, type=m.pdiag_type, num=m.pdiag_num, ifindex=info.pdi_index, version=info.pdi_version,
            reserve=info.pdi_reserve, copy_thresh=info.pdi_copy_thresh, tstamp=info.pdi_tstamp, flags=info.pdi_flags,
            memberships=tuple(mcs), rx_ring=PACKET_DIAG_RX_RING in a, tx_ring=PACKET_DIAG_TX_RING in a,
            fanout=int.from_bytes(fan[:4], "little") if len(fan) >= 4 else 0, filter=PACKET_DIAG_FILTER in a,
            rmem=int.from_bytes(mem[:4], "little") if len(mem) >= 4 else 0)
    return out


# --- netlink sockets (net/netlink/diag.c) ------------------------------------------------------

NDIAG_PROTO_ALL = 255
NDIAG_SHOW_MEMINFO, NDIAG_SHOW_GROUPS, NDIAG_SHOW_FLAGS = 0x1, 0x2, 0x8
NETLINK_DIAG_MEMINFO, NETLINK_DIAG_GROUPS, NETLINK_DIAG_FLAGS = 0, 1, 4
NDIAG_FLAG_CB_RUNNING = 0x1


class netlink_diag_req(ctypes.Structure):
    _fields_ = [("sdiag_family", ctypes.c_uint8), ("sdiag_protocol", ctypes.c_uint8), ("pad", ctypes.c_uint16),
                ("ndiag_ino", ctypes.c_uint32), ("ndiag_show", ctypes.c_uint32), ("ndiag_cookie", ctypes.c_uint32 * 2)]


class netlink_diag_msg(ctypes.Structure):
    _fields_ = [("ndiag_family", ctypes.c_uint8), ("ndiag_type", ctypes.c_uint8), ("ndiag_protocol", ctypes.c_uint8),
                ("ndiag_state", ctypes.c_uint8), ("ndiag_portid", ctypes.c_uint32),
                ("ndiag_dst_portid", ctypes.c_uint32), ("ndiag_dst_group", ctypes.c_uint32),
                ("ndiag_ino", ctypes.c_uint32), ("ndiag_cookie", ctypes.c_uint32 * 2)]


@dataclass(frozen=True)
class NetlinkDiag:
    """One netlink socket as netlink_diag reports it.  ``state``: 1 (NETLINK_CONNECTED) once connected to
    ``dst_portid`` / ``dst_group``; ``groups``: the multicast groups it listens to (group N is bit N-1);
    ``flags``: NDIAG_FLAG_*; ``rmem``: bytes of messages queued to be read."""

    ino: int
    type: int
    protocol: int
    state: int
    portid: int
    dst_portid: int
    dst_group: int
    groups: int
    flags: int
    rmem: int


def netlink_sockets(protocol: int = NDIAG_PROTO_ALL) -> dict[int, NetlinkDiag]:
    """Every netlink socket of this network namespace (of ``protocol``, or all), by inode."""
    req = netlink_diag_req(sdiag_family=socket.AF_NETLINK, sdiag_protocol=protocol,
                           ndiag_show=NDIAG_SHOW_MEMINFO | NDIAG_SHOW_GROUPS | NDIAG_SHOW_FLAGS)
    req.ndiag_cookie[0] = req.ndiag_cookie[1] = INET_DIAG_NOCOOKIE
    out: dict[int, NetlinkDiag] = {}
    for body in _request(req, dump=True, call=f"sock_diag(family=AF_NETLINK, protocol={protocol})"):
        m = netlink_diag_msg.from_buffer_copy(body.ljust(ctypes.sizeof(netlink_diag_msg), b"\0"))
        a = _attrs(body, ctypes.sizeof(netlink_diag_msg))
        mem, flags = a.get(NETLINK_DIAG_MEMINFO, b""), a.get(NETLINK_DIAG_FLAGS, b"")
        out[m.ndiag_ino] = NetlinkDiag(
            ino=m.ndiag_ino, type=m.ndiag_type, protocol=m.ndiag_protocol, state=m.ndiag_state,
            portid=m.ndiag_portid, dst_portid=m.ndiag_dst_portid, dst_group=m.ndiag_dst_group,
            groups=int.from_bytes(a.get(NETLINK_DIAG_GROUPS, b""), "little"),
            flags=int.from_bytes(flags[:4], "little") if len(flags) >= 4 else 0,
            rmem=int.from_bytes(mem[:4], "little") if len(mem) >= 4 else 0)
    return out
