"""Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM): their protocol, bound interface, options and memberships.

What such a socket holds that a program set is told by packet_diag
(:func:`ckpt.kernel.sock_diag.packet_sockets`, by inode: getsockname names the
interface but not the protocol the socket receives, and getsockopt cannot read
memberships or PACKET_COPY_THRESH) and by getsockopt for its PACKET_* options
(:mod:`ckpt.kernel.sockopts`, saved like any option a program changed).

Restore makes it again in the target: ``socket(AF_PACKET, type, 0)`` (not
running yet, so it takes no frame before it is bound), its options,
``bind`` to the protocol and the interface — looked up by *name* in the
target's network namespace (``SIOCGIFINDEX`` on the new socket), as an
interface index is the host's — then each membership as many times as it was
added.  An interface that does not exist there fails the restore, naming it.

Refused at dump: a mapped ring (PACKET_RX_RING / PACKET_TX_RING: its frames
are memory shared with the kernel, whose per-frame ownership no call sets),
a fanout group (PACKET_FANOUT: a group spans sockets, maybe of other
processes), a socket sock_diag does not see (another network namespace).
Frames queued and not read are refused too, unless ``--tolerate packet-queue``.
"""

from __future__ import annotations

import socket
import struct

from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.sock_diag import PacketDiag, packet_sockets
from ..tolerance import lose
from .fdkind import FdKind, Opener, refuse
from .sockets import Peek, dump, ifindex_in, set_status_flags, setopts

__all__ = ["describe", "restore", "lines", "KIND"]

FileEntry = files_pb2.FileEntry
SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_COPY_THRESH = 263, 1, 7
#: struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8].
_SOCKADDR_LL = struct.Struct("<H2siHBB8s")
#: struct packet_mreq: ifindex, type, alen, address[8].
_PACKET_MREQ = struct.Struct("<iHH8s")
_MR_TYPES = {0: "multicast", 1: "promisc", 2: "allmulti", 3: "unicast"}


def _diag(pid: int, fd: int, inode: int) -> PacketDiag:
    try:
        d = packet_sockets().get(inode)
    except OSError as exc:
        raise refuse(pid, fd, f"a packet socket sock_diag cannot report ({exc.strerror or exc})",
                     "the kernel needs CONFIG_PACKET_DIAG for ckpt to read a packet socket") from exc
    if d is None:
        raise refuse(pid, fd, "a packet socket of another network namespace",
                     "sock_diag reports the sockets of the dumper's network namespace only")
    return d


def _ifname(pid: int, fd: int, ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError as exc:
        raise refuse(pid, fd, f"a packet socket on interface {ifindex}, which has no name here") from exc


def describe(pid: int, fd: int, entry: FileEntry, p: Peek, opts: list[files_pb2.SockOpt], *,
             notes: list[str] | None, tolerate: frozenset[str]) -> None:
    """Fill ``entry`` (kind PACKET) for the packet socket at ``fd`` of ``pid``; Unsupported for what cannot
    come back (see the module doc)."""
    d = _diag(pid, fd, p.inode)
    if d.rx_ring or d.tx_ring:
        ring = " and ".join(n for n, on in (("PACKET_RX_RING", d.rx_ring), ("PACKET_TX_RING", d.tx_ring)) if on)
        raise refuse(pid, fd, f"a packet socket with a mapped ring ({ring})",
                     "a ring's frames are memory shared with the kernel, and no call gives a frame back to "
                     "the side that owned it: stop the capture before the dump")
    if d.fanout:
        raise refuse(pid, fd, f"a packet socket in fanout group {d.fanout & 0xFFFF} (PACKET_FANOUT)",
                     "a fanout group spans sockets (maybe of other processes) and ckpt does not rebuild it")
    pk = files_pb2.PacketSocket(type=p.type, protocol=d.num, ifindex=d.ifindex,
                                ifname=_ifname(pid, fd, d.ifindex) if d.ifindex else "",
                                copy_thresh=d.copy_thresh)
    pk.options.extend(opts)
    for m in d.memberships:
        pk.memberships.add(ifindex=m.ifindex, ifname=_ifname(pid, fd, m.ifindex), type=m.type, address=m.address,
                           count=m.count)
    if d.rmem:
        lose("packet-queue", tolerate, f"process {pid}: fd {fd}", "a packet socket with frames not yet read", notes)
        pk.queue_lost = True
    entry.kind = FileEntry.PACKET
    entry.packet.CopyFrom(pk)


def _ifindex(r: Opener, fd: int, name: str) -> int:
    return ifindex_in(r.inj, r.s, fd, name, "a packet socket was bound to")


def restore(r: Opener, entry: FileEntry, fds: list[int]) -> int:
    """The packet socket of ``entry`` made again in the target (see the module doc)."""
    pk = entry.packet
    fd = r.inj.call(NR.socket, socket.AF_PACKET, pk.type | socket.SOCK_CLOEXEC, 0, name="socket(AF_PACKET)")
    try:
        setopts(r.inj, r.s, fd, pk.options)
        if pk.protocol or pk.ifindex:
            index = _ifindex(r, fd, pk.ifname) if pk.ifindex else 0
            r.s.write(0, _SOCKADDR_LL.pack(socket.AF_PACKET, pk.protocol.to_bytes(2, "big"), index, 0, 0, 0, b""))
            r.inj.call(NR.bind, fd, r.s.addr, _SOCKADDR_LL.size, name=f"bind(AF_PACKET, {pk.ifname or 'any'})")
        for m in pk.memberships:
            mreq = _PACKET_MREQ.pack(_ifindex(r, fd, m.ifname), m.type, len(m.address), bytes(m.address))
            for _ in range(max(m.count, 1)):
                r.s.write(0, mreq)
                r.inj.call(NR.setsockopt, fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, r.s.addr, len(mreq),
                           name="setsockopt(PACKET_ADD_MEMBERSHIP)")
        if pk.copy_thresh:
            r.s.write(0, struct.pack("<i", pk.copy_thresh))
            r.inj.call(NR.setsockopt, fd, SOL_PACKET, PACKET_COPY_THRESH, r.s.addr, 4,
                       name="setsockopt(PACKET_COPY_THRESH)")
    except BaseException:
        r.inj.close(fd)
        raise
    return set_status_flags(r, fd, entry)


def lines(inode: int) -> list[tuple[str, str]]:
    """What packet_diag says of the packet socket of ``inode``, for the self-check: type, protocol, bound
    interface (by name: the index is the host's), PDI_* flags (running, auxdata, origdev, vnet header, loss),
    version, reserve, copy threshold, timestamp source, memberships, rings, fanout, whether frames are queued.
    None for a socket packet_diag does not see."""
    try:
        d = packet_sockets().get(inode)
    except OSError:
        return []
    if d is None:
        return []

    def name(ifindex: int) -> str:
        try:
            return socket.if_indextoname(ifindex) if ifindex else "any"
        except OSError:
            return f"#{ifindex}"

    members = sorted(f"{name(m.ifindex)} {_MR_TYPES.get(m.type, m.type)} {m.address.hex() or '-'} x{m.count}"
                     for m in d.memberships)
    return [("type", str(d.type)), ("protocol", f"{d.num:#06x}"), ("interface", name(d.ifindex)),
            ("flags", f"{d.flags:#x}"), ("version", str(d.version)), ("reserve", str(d.reserve)),
            ("copy_thresh", str(d.copy_thresh)), ("tstamp", str(d.tstamp)), ("memberships", "; ".join(members)),
            ("rings", f"rx {'yes' if d.rx_ring else 'no'} tx {'yes' if d.tx_ring else 'no'}"),
            ("fanout", str(d.fanout)), ("queued", "yes" if d.rmem else "no")]


#: Never claimed: every socket is claimed as inet, and :func:`ckpt.resources.sockets.dump` makes it PACKET.
KIND = FdKind(FileEntry.PACKET, None, dump, restore)
