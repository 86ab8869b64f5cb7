"""IP multicast group memberships of a socket: the groups a network namespace has joined, and a socket's own.

No getsockopt lists the groups a socket joined (IP_ADD_MEMBERSHIP and
MCAST_JOIN_GROUP only set).  Two things together tell them:

* ``/proc/PID/net/igmp`` and ``igmp6`` list every group some socket (or the
  kernel itself) joined on each interface of the process's network namespace;
* ``getsockopt(MCAST_MSFILTER)`` asked for one (interface, group) answers the
  socket's source filter for it — mode and sources — if the socket is a member,
  and EADDRNOTAVAIL if it is not.

So a socket's memberships are the groups of its namespace it answers for.
No policy here: :mod:`ckpt.resources.mcast` decides what to do with them.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from .libc import libc

__all__ = ["MCAST_JOIN_GROUP", "MCAST_MSFILTER", "MCAST_INCLUDE", "MCAST_EXCLUDE", "Group", "Membership",
           "namespace_groups", "membership", "group_req", "group_filter", "level_of"]

MCAST_JOIN_GROUP, MCAST_MSFILTER = 42, 48  # linux/in.h, for both IPPROTO_IP and IPPROTO_IPV6
MCAST_EXCLUDE, MCAST_INCLUDE = 0, 1
_SS = 128  # struct __kernel_sockaddr_storage
#: struct group_filter up to gf_slist: gf_interface (u32, padded to 8), gf_group, gf_fmode, gf_numsrc.
_GF_HEAD = struct.Struct(f"=I4x{_SS}sII")
#: struct group_req: gr_interface (u32, padded to 8), gr_group.
_GR = struct.Struct(f"=I4x{_SS}s")


@dataclass(frozen=True)
class Group:
    """A group joined on an interface of a network namespace (one line of /proc/net/igmp or igmp6)."""

    family: int
    ifindex: int
    ifname: str
    address: str


@dataclass(frozen=True)
class Membership:
    """A socket's membership: the group, and its source filter (MCAST_INCLUDE or MCAST_EXCLUDE those sources)."""

    group: Group
    mode: int
    sources: tuple[str, ...]


def namespace_groups(pid: int) -> list[Group]:
    """Every (interface, group) joined in ``pid``'s network namespace; none where a file is missing (no IPv6)."""
    groups: list[Group] = []
    try:
        with open(f"/proc/{pid}/net/igmp") as f:
            index, name = 0, ""
            for line in f.readlines()[1:]:
                if not line.startswith("\t"):  # "Idx Device : Count Querier"
                    fields = line.split()
                    index, name = int(fields[0]), fields[1]
                elif fields := line.split():  # "Group Users Timer Reporter": the group as the u32 it is in memory
                    address = socket.inet_ntoa(struct.pack("=I", int(fields[0], 16)))
                    groups.append(Group(socket.AF_INET, index, name, address))
    except FileNotFoundError:
        pass
    try:
        with open(f"/proc/{pid}/net/igmp6") as f:
            for line in f:  # "Idx Device Group Users Flags Timer"
                fields = line.split()
                address = str(ipaddress.IPv6Address(bytes.fromhex(fields[2])))
                groups.append(Group(socket.AF_INET6, int(fields[0]), fields[1], address))
    except FileNotFoundError:
        pass
    return groups


def _sockaddr(family: int, address: str) -> bytes:
    if family == socket.AF_INET:
        raw = struct.pack("=HH4s", socket.AF_INET, 0, socket.inet_pton(socket.AF_INET, address))
    else:
        raw = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, address), 0)
    return raw.ljust(_SS, b"\0")


def _address(raw: bytes) -> str:
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    return socket.inet_ntop(socket.AF_INET6, raw[8:24])


def level_of(family: int) -> int:
    """The getsockopt/setsockopt level of a membership of ``family``."""
    return socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6


def membership(fd: int, group: Group) -> Membership | None:
    """The membership in ``group`` of the socket at our ``fd`` (of the group's family), or None if not a member."""
    room = 16
    while True:
        buf = ctypes.create_string_buffer(_GF_HEAD.pack(group.ifindex, _sockaddr(group.family, group.address),
                                                        0, room) + bytes(_SS * room))
        size = ctypes.c_uint32(len(buf))
        if libc.getsockopt(fd, level_of(group.family), MCAST_MSFILTER, buf, ctypes.byref(size)) != 0:
            err = ctypes.get_errno()
            if err in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.ENODEV):  # not a member (or not that kind)
                return None
            raise OSError(err, f"getsockopt(MCAST_MSFILTER, {group.address}): {os.strerror(err)}")
        _, _, mode, count = _GF_HEAD.unpack_from(buf.raw)
        if count <= room:
            base = _GF_HEAD.size
            sources = tuple(_address(buf.raw[base + i * _SS:base + (i + 1) * _SS]) for i in range(count))
            return Membership(group, mode, sources)
        room = count


def group_req(m: Membership, ifindex: int) -> bytes:
    """MCAST_JOIN_GROUP's value for ``m`` on interface ``ifindex``."""
    return _GR.pack(ifindex, _sockaddr(m.group.family, m.group.address))


def group_filter(m: Membership, ifindex: int) -> bytes:
    """MCAST_MSFILTER's value setting ``m``'s mode and sources on interface ``ifindex``."""
    return (_GF_HEAD.pack(ifindex, _sockaddr(m.group.family, m.group.address), m.mode, len(m.sources))
            + b"".join(_sockaddr(m.group.family, s) for s in m.sources))
