"""Netlink sockets (AF_NETLINK): their protocol, port id, multicast groups, peer and options.

netlink_diag (:func:`ckpt.kernel.sock_diag.netlink_sockets`, by inode) tells
what getsockname cannot: every group the socket listens to (bind's
``nl_groups`` holds only the first 32), the port and group it is connected
to, and whether messages wait to be read; the NETLINK_* options are read with
getsockopt (:mod:`ckpt.kernel.sockopts`) like any option a program changed.

Restore makes it again in the target: ``socket(AF_NETLINK, type, protocol)``,
its options, ``bind`` with its own port id (an autobound one too: the kernel
then keeps it, and a peer that sends to that port still reaches it), each
group joined with NETLINK_ADD_MEMBERSHIP, ``connect`` if it was connected.
A port id another socket holds now fails the restore, naming it.

Refused at dump: a socket in the middle of a dump reply (NLM_F_DUMP, its
callback still running in the kernel), one of another network namespace
(sock_diag does not see it).  Messages queued and not read are refused too,
unless ``--tolerate netlink-queue``: a kernel message cannot be queued again.
"""

from __future__ import annotations

import os
import socket
import struct

from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.sock_diag import NDIAG_FLAG_CB_RUNNING, NetlinkDiag, netlink_sockets
from ..tolerance import lose
from .fdkind import FdKind, Opener, refuse
from .sockets import Peek, dump, set_status_flags, setopts

__all__ = ["describe", "restore", "lines", "KIND"]

FileEntry = files_pb2.FileEntry
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
#: nlk->state once connect()ed.
NETLINK_CONNECTED = 1
#: struct sockaddr_nl: family, pad, port id, groups (the first 32).
_SOCKADDR_NL = struct.Struct("<HHII")


def _diag(pid: int, fd: int, p: Peek) -> NetlinkDiag | None:
    """netlink_diag's record of the socket; None for one never bound (the kernel lists bound sockets and
    those in a group only: such a socket has no port, no group and no queue)."""
    try:
        d = netlink_sockets(p.protocol).get(p.inode)
    except OSError as exc:
        raise refuse(pid, fd, f"a netlink socket sock_diag cannot report ({exc.strerror or exc})",
                     "the kernel needs CONFIG_NETLINK_DIAG for ckpt to read a netlink socket") from exc
    if d is None and p.local:
        raise refuse(pid, fd, "a netlink socket of another network namespace",
                     "sock_diag reports the sockets of the dumper's network namespace only")
    return d


def describe(pid: int, fd: int, entry: FileEntry, p: Peek, opts: list[files_pb2.SockOpt], *,
             notes: list[str] | None, tolerate: frozenset[str]) -> None:
    """Fill ``entry`` (kind NETLINK) for the netlink socket at ``fd`` of ``pid``; Unsupported for what cannot
    come back (see the module doc)."""
    d = _diag(pid, fd, p)
    nl = files_pb2.NetlinkSocket(type=p.type, protocol=p.protocol)
    nl.options.extend(opts)
    if d is not None:
        if d.flags & NDIAG_FLAG_CB_RUNNING:
            raise refuse(pid, fd, f"a netlink socket (protocol {p.protocol}) in the middle of a dump reply",
                         "the kernel is still producing the reply to a NLM_F_DUMP request (its state is the "
                         "kernel's): dump again once the program has read the reply to its end")
        groups = d.groups.to_bytes((d.groups.bit_length() + 7) // 8, "little")
        nl.portid, nl.groups, nl.state = d.portid, groups, d.state
        nl.dst_portid, nl.dst_group = d.dst_portid, d.dst_group
        if d.rmem:
            lose("netlink-queue", tolerate, f"process {pid}: fd {fd}",
                 f"a netlink socket (protocol {p.protocol}) with messages not yet read", notes)
            nl.queue_lost = True
    entry.kind = FileEntry.NETLINK
    entry.netlink.CopyFrom(nl)


def _sockaddr(portid: int, groups: int = 0) -> bytes:
    return _SOCKADDR_NL.pack(socket.AF_NETLINK, 0, portid, groups)


def restore(r: Opener, entry: FileEntry, fds: list[int]) -> int:
    """The netlink socket of ``entry`` made again in the target (see the module doc)."""
    nl = entry.netlink
    fd = r.inj.call(NR.socket, socket.AF_NETLINK, nl.type | socket.SOCK_CLOEXEC, nl.protocol,
                    name=f"socket(AF_NETLINK, {nl.protocol})")
    try:
        setopts(r.inj, r.s, fd, nl.options)
        if nl.portid:
            r.s.write(0, _sockaddr(nl.portid))
            try:
                r.inj.call(NR.bind, fd, r.s.addr, _SOCKADDR_NL.size, name=f"bind(AF_NETLINK, port {nl.portid})")
            except OSError as exc:
                raise RestoreError(f"cannot bind a netlink socket (protocol {nl.protocol}) to its port id "
                                   f"{nl.portid} again: {os.strerror(exc.errno or 0)}",
                                   hint="another socket holds that port id (is the dumped process still "
                                        "running?)") from exc
        bits = int.from_bytes(nl.groups, "little")
        for group in (n + 1 for n in range(bits.bit_length()) if bits >> n & 1):
            r.s.write(0, struct.pack("<I", group))
            r.inj.call(NR.setsockopt, fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, r.s.addr, 4,
                       name=f"setsockopt(NETLINK_ADD_MEMBERSHIP, {group})")
        if nl.state == NETLINK_CONNECTED:
            r.s.write(0, _sockaddr(nl.dst_portid, nl.dst_group))
            r.inj.call(NR.connect, fd, r.s.addr, _SOCKADDR_NL.size, name="connect(AF_NETLINK)")
    except BaseException:
        r.inj.close(fd)
        raise
    return set_status_flags(r, fd, entry)


def lines(inode: int) -> list[tuple[str, str]]:
    """What netlink_diag says of the netlink socket of ``inode``, for the self-check: type, protocol, port id,
    groups, state and peer, flags, whether messages are queued.  None for a socket it does not list (never
    bound, or of another network namespace)."""
    try:
        d = netlink_sockets().get(inode)
    except OSError:
        return []
    if d is None:
        return []
    return [("type", str(d.type)), ("protocol", str(d.protocol)), ("portid", str(d.portid)),
            ("groups", f"{d.groups:#x}"), ("state", str(d.state)), ("peer", f"{d.dst_portid}/{d.dst_group}"),
            ("flags", f"{d.flags:#x}"), ("queued", "yes" if d.rmem else "no")]


#: Never claimed: every socket is claimed as inet, and :func:`ckpt.resources.sockets.dump` makes it NETLINK.
KIND = FdKind(FileEntry.NETLINK, None, dump, restore)
