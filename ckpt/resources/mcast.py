"""Multicast memberships of UDP and raw sockets: read at dump, joined again at restore, shown to the self-check.

A socket's memberships are found by asking it, for every group its network
namespace has joined (``/proc/PID/net/igmp``, ``igmp6``), for its source
filter (:mod:`ckpt.kernel.mcast`).  Each is kept with its interface's name
and joined again with ``MCAST_JOIN_GROUP`` on the interface of that name in the
restored process's namespace; a filter other than "every source" (an
``IP_ADD_SOURCE_MEMBERSHIP``, ``MCAST_BLOCK_SOURCE`` or ``MCAST_MSFILTER``) is
set again with ``MCAST_MSFILTER``.  An IPv6 socket's IPv4 memberships (joined
through IPv4-mapped options) are not looked for.
"""

from __future__ import annotations

import socket

from ..control.inject import Injector, Scratch
from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel import mcast as km
from ..kernel.arch_x86_64 import NR

__all__ = ["memberships", "dump", "restore", "lines"]

_MODES = {km.MCAST_EXCLUDE: "exclude", km.MCAST_INCLUDE: "include"}


def memberships(pid: int, sock: socket.socket) -> list[km.Membership]:
    """The memberships of ``sock`` (ours, the same open file as one of ``pid``'s), in the namespace's order."""
    family = sock.family
    found = (km.membership(sock.fileno(), g) for g in km.namespace_groups(pid) if g.family == family)
    return [m for m in found if m is not None]


def dump(pid: int, sock: socket.socket, inet: files_pb2.InetSocket) -> None:
    """Record ``sock``'s memberships in ``inet``."""
    for m in memberships(pid, sock):
        inet.memberships.add(family=m.group.family, ifname=m.group.ifname, group=m.group.address, mode=m.mode,
                             sources=m.sources)


def restore(inj: Injector, s: Scratch, fd: int, inet: files_pb2.InetSocket) -> None:
    """Join ``inet``'s groups again on the restored socket ``fd`` (see the module doc)."""
    from .sockets import ifindex_in  # sockets calls us

    for rec in inet.memberships:
        m = km.Membership(km.Group(rec.family, 0, rec.ifname, rec.group), rec.mode, tuple(rec.sources))
        index = ifindex_in(inj, s, fd, rec.ifname, f"a socket joined multicast group {rec.group} on")
        level = km.level_of(rec.family)
        _setopt(inj, s, fd, level, km.MCAST_JOIN_GROUP, km.group_req(m, index), "MCAST_JOIN_GROUP", rec)
        if m.mode != km.MCAST_EXCLUDE or m.sources:  # joining gave "every source": another filter is set
            _setopt(inj, s, fd, level, km.MCAST_MSFILTER, km.group_filter(m, index), "MCAST_MSFILTER", rec)


def _setopt(inj: Injector, s: Scratch, fd: int, level: int, opt: int, value: bytes, label: str,
            rec: files_pb2.McastMembership) -> None:
    s.write(0, value)
    try:
        inj.call(NR.setsockopt, fd, level, opt, s.addr, len(value), name=f"setsockopt({fd}, {label})")
    except OSError as exc:
        raise RestoreError(f"cannot join multicast group {rec.group} on {rec.ifname} again ({label}): "
                           f"{exc.strerror}") from exc


def lines(pid: int, sock: socket.socket) -> list[tuple[str, str]]:
    """The self-check's lines: one ``mcast`` line per membership (interface, group, filter mode and sources)."""
    return [("mcast", f"{m.group.ifname} {m.group.address} {_MODES.get(m.mode, m.mode)} "
                      f"{','.join(sorted(m.sources)) or '-'}") for m in memberships(pid, sock)]
