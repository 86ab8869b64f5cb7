"""Sockets of the kinds beyond TCP/UDP/unix, each checked by the process itself after a restore (run as root).

The argument names the kind:

* ``udp``: UDP sockets with a shutdown direction — connected with SHUT_WR, unconnected (bound) with
  SHUT_RD, connected with SHUT_RDWR; the SHUT_RD one polls as read-hung-up (POLLRDHUP), the SHUT_RDWR
  one as hung up, the SHUT_WR one still receives from its peer.
* ``raw``: raw sockets — IPv4 ICMP with an ICMP_FILTER that passes echo replies only, bound to 127.0.0.1,
  which sends an echo request and gets the reply; IPv4 protocol 253 connected to 127.0.0.1 with IP_TOS,
  which receives what it sends; IPPROTO_RAW (IP_HDRINCL); when ::1 exists, IPv6 ICMPv6 with an
  ICMPV6_FILTER (echo, reply) and IPv6 protocol 253 bound to ::1 with IPV6_CHECKSUM, which receives what
  it sends.
* ``packet``: packet sockets on lo — SOCK_RAW bound to ethertype 0x88b5 with PACKET_AUXDATA, ORIGDEV,
  RESERVE, VERSION, LOSS, QDISC_BYPASS, TIMESTAMP; SOCK_DGRAM bound to 0x88b6; an unbound one with
  PACKET_VNET_HDR, a PROMISC membership and a multicast membership added twice.  The first sends a frame
  of each ethertype on lo and both receive theirs.
* ``netlink``: NETLINK_ROUTE bound to RTMGRP_LINK and group 33, with NETLINK_EXT_ACK and
  NETLINK_GET_STRICT_CHK, which dumps the links (lo among them) and keeps its port id; two
  NETLINK_USERSOCK sockets, one bound to a chosen port id, the other connected to it, which sends to it;
  an unbound NETLINK_GENERIC socket.

A second argument adds what ckpt refuses: ``packet ring`` (a PACKET_RX_RING on the unbound socket),
``packet fanout`` (the first in a PACKET_FANOUT group), ``netlink queued`` (a message left unread on the
USERSOCK server: refused unless tolerated, and then not checked).

Every option set is read back and compared.  Prints ``READY``; on each SIGUSR1 prints ``PASS rawsk
KIND round=N`` or ``FAIL what``.  Nothing is left queued between rounds.
"""

import itertools
import os
import select
import signal
import socket
import struct
import sys

SOL_RAW, ICMP_FILTER, SOL_ICMPV6, ICMPV6_FILTER, IPV6_CHECKSUM = 255, 1, 58, 1, 7
SOL_PACKET, PACKET_ADD_MEMBERSHIP = 263, 1
PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VERSION, PACKET_RESERVE, PACKET_LOSS = 8, 9, 10, 12, 14
PACKET_VNET_HDR, PACKET_TIMESTAMP, PACKET_QDISC_BYPASS, PACKET_RX_RING, PACKET_FANOUT = 15, 17, 20, 5, 18
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_LIST_MEMBERSHIPS = 270, 1, 9
NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_USERSOCK, NETLINK_GENERIC = 11, 12, 2, 16
RTM_GETLINK, NLM_F_REQUEST, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR = 18, 1, 0x300, 3, 2
checks: list[tuple[str, socket.socket, int, int, int, object]] = []


def setting(name: str, sock: socket.socket, level: int, opt: int, value: object) -> None:
    """Set an option and remember what getsockopt gives right after."""
    sock.setsockopt(level, opt, value)
    buflen = len(value) if isinstance(value, bytes) else 0
    checks.append((name, sock, level, opt, buflen, sock.getsockopt(level, opt, buflen) if buflen
                   else sock.getsockopt(level, opt)))


def options_changed() -> list[str]:
    """Each option set at the start that getsockopt gives otherwise now."""
    now = [(name, want, sock.getsockopt(level, opt, size) if size else sock.getsockopt(level, opt))
           for name, sock, level, opt, size, want in checks]
    return [f"{name}: want {want!r} got {got!r}" for name, want, got in now if got != want]


def wait_for(sock: socket.socket, match, what: str) -> str | None:  # noqa: ANN001
    """Read ``sock`` until a message ``match`` accepts (others are skipped); None, or what failed."""
    sock.settimeout(10)
    try:
        while True:
            if match(sock.recv(65536)):
                return None
    except OSError as exc:
        return f"{what}: {exc}"
    finally:
        sock.settimeout(None)


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) & 1)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def udp_setup(extra: str) -> list:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    a.shutdown(socket.SHUT_WR)
    rd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rd.bind(("127.0.0.1", 0))
    try:
        rd.shutdown(socket.SHUT_RD)  # unconnected: the kernel sets it and answers ENOTCONN
    except OSError:
        pass
    both = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    both.connect(a.getsockname())
    both.shutdown(socket.SHUT_RDWR)
    return [a, b, rd, both]


def udp_check(socks: list, n: int) -> list[str]:
    a, b, rd, both = socks
    bad = []
    for sock, want, what in ((rd, select.POLLRDHUP, "the SHUT_RD socket does not poll as read-hung-up"),
                             (both, select.POLLHUP, "the SHUT_RDWR socket does not poll as hung up")):
        p = select.poll()
        p.register(sock, select.POLLIN | select.POLLRDHUP)
        if not any(ev & want for _, ev in p.poll(0)):
            bad.append(what)
    b.send(f"to-a {n}".encode())
    if (why := wait_for(a, lambda m: m == f"to-a {n}".encode(), "the SHUT_WR socket receiving")) is not None:
        bad.append(why)
    if a.getpeername() != b.getsockname():
        bad.append("the SHUT_WR socket's peer")
    return bad


def raw_setup(extra: str) -> dict:
    out = {}
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    setting("icmp ICMP_FILTER", icmp, SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFE))  # echo reply only
    icmp.bind(("127.0.0.1", 0))
    out["icmp"] = icmp
    p253 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253)
    setting("raw253 IP_TOS", p253, socket.IPPROTO_IP, socket.IP_TOS, 0x20)
    p253.connect(("127.0.0.1", 0))
    out["p253"] = p253
    hdr = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    setting("rawproto IP_TTL", hdr, socket.IPPROTO_IP, socket.IP_TTL, 7)
    checks.append(("rawproto IP_HDRINCL", hdr, socket.IPPROTO_IP, socket.IP_HDRINCL, 0, 1))
    out["hdr"] = hdr
    inc = socket.socket(socket.AF_INET, socket.SOCK_RAW, 254)
    setting("raw254 IP_HDRINCL", inc, socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    out["inc"] = inc
    try:
        icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        icmp6.bind(("::1", 0))
        blocked = [0xFFFFFFFF] * 8
        blocked[129 >> 5] &= ~(1 << (129 & 31))  # ICMPV6_FILTER_SETPASS(ECHO_REPLY)
        setting("icmp6 ICMPV6_FILTER", icmp6, SOL_ICMPV6, ICMPV6_FILTER, struct.pack("8I", *blocked))
        out["icmp6"] = icmp6
        r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 253)
        setting("raw6 IPV6_CHECKSUM", r6, socket.IPPROTO_IPV6, IPV6_CHECKSUM, 2)
        r6.bind(("::1", 0))
        out["r6"] = r6
    except OSError:
        pass  # no ::1 here
    return out


def raw_check(s: dict, n: int) -> list[str]:
    bad = []
    ident = (os.getpid() + n) & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, n) + b"ckpt-ping"
    req = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    s["icmp"].sendto(req, ("127.0.0.1", 0))
    # IPv4 raw: the IP header comes first (its length in the low nibble of byte 0)
    why = wait_for(s["icmp"], lambda m: m[(m[0] & 15) * 4] == 0 and m[(m[0] & 15) * 4 + 4:][:4]
                   == struct.pack("!HH", ident, n), "the ICMP echo reply")
    bad += [why] if why else []
    s["p253"].send(f"p253 {n}".encode())
    why = wait_for(s["p253"], lambda m: m.endswith(f"p253 {n}".encode()) and m[1] == 0x20, "raw 253 loopback")
    bad += [why] if why else []
    if "icmp6" in s:
        s["icmp6"].sendto(struct.pack("!BBHHH", 128, 0, 0, ident, n) + b"ckpt-ping6", ("::1", 0))
        why = wait_for(s["icmp6"], lambda m: m[0] == 129 and m[4:8] == struct.pack("!HH", ident, n),
                       "the ICMPv6 echo reply")
        bad += [why] if why else []
        s["r6"].sendto(f"r6__{n}..".encode(), ("::1", 0))  # bytes 2-3: the checksum the kernel fills in
        why = wait_for(s["r6"], lambda m: m[4:] == f"{n}..".encode(), "raw6 253 loopback")
        bad += [why] if why else []
    return bad


ETH_A, ETH_B = 0x88B5, 0x88B6


def packet_setup(extra: str) -> list:
    a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_A))
    for name, opt, value in (("PACKET_AUXDATA", PACKET_AUXDATA, 1), ("PACKET_ORIGDEV", PACKET_ORIGDEV, 1),
                             ("PACKET_VERSION", PACKET_VERSION, 1), ("PACKET_RESERVE", PACKET_RESERVE, 4),
                             ("PACKET_LOSS", PACKET_LOSS, 1), ("PACKET_QDISC_BYPASS", PACKET_QDISC_BYPASS, 1),
                             ("PACKET_TIMESTAMP", PACKET_TIMESTAMP, 1)):
        setting(f"packet {name}", a, SOL_PACKET, opt, value)
    a.bind(("lo", ETH_A))
    b = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    b.bind(("lo", ETH_B))
    c = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    setting("unbound PACKET_VNET_HDR", c, SOL_PACKET, PACKET_VNET_HDR, 1)
    lo = socket.if_nametoindex("lo")
    c.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", lo, 1, 0, b""))  # PACKET_MR_PROMISC
    for _ in range(2):
        c.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", lo, 0, 6, bytes.fromhex("01005e0000fb")))
    if extra == "ring":  # struct tpacket_req: block size, blocks, frame size, frames
        c.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("4I", 4096, 1, 2048, 2))
    elif extra == "fanout":
        a.setsockopt(SOL_PACKET, PACKET_FANOUT, 0x4242)  # group 0x4242, PACKET_FANOUT_HASH
    return [a, b, c]


def packet_check(socks: list, n: int) -> list[str]:
    a, b, _c = socks
    bad = []
    if a.getsockname()[:2] != ("lo", ETH_A) or b.getsockname()[:2] != ("lo", ETH_B):
        bad.append(f"bound to {a.getsockname()[:2]} / {b.getsockname()[:2]}")
    mac = bytes(6)
    for eth, sock in ((ETH_A, a), (ETH_B, b)):
        payload = f"ckpt-frame {eth:x} {os.getpid()} {n}".encode().ljust(46, b".")
        a.send(mac + mac + struct.pack("!H", eth) + payload)
        why = wait_for(sock, lambda m: payload in m, f"the frame of ethertype {eth:#x}")
        bad += [why] if why else []
    return bad


def netlink_setup(extra: str) -> dict:
    route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    setting("route NETLINK_EXT_ACK", route, SOL_NETLINK, NETLINK_EXT_ACK, 1)
    setting("route NETLINK_GET_STRICT_CHK", route, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    route.bind((0, 1))  # RTMGRP_LINK
    route.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33)
    checks.append(("route groups", route, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 8,
                   route.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 8)))
    server = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_USERSOCK)
    server.bind((0x7F000000 | os.getpid(), 0))
    client = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_USERSOCK)
    client.connect(server.getsockname())
    generic = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_GENERIC)
    if extra == "queued":
        client.send(b"left unread")
    return {"route": route, "port": route.getsockname()[0], "server": server, "client": client, "generic": generic,
            "names": (server.getsockname(), client.getsockname(), generic.getsockname())}


def _links(route: socket.socket, seq: int) -> set[int] | str:
    """RTM_GETLINK dump: the interface indexes it lists, or what failed."""
    route.send(struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(16))
    found: set[int] = set()
    route.settimeout(10)
    try:
        while True:
            data = route.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, got_seq, _pid = struct.unpack_from("=IHHII", data, off)
                if got_seq == seq:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        return f"RTM_GETLINK: error {struct.unpack_from('=i', data, off + 16)[0]}"
                    found.add(struct.unpack_from("=i", data, off + 20)[0])  # ifinfomsg.ifi_index
                off += (length + 3) & ~3
    except OSError as exc:
        return f"RTM_GETLINK: {exc}"
    finally:
        route.settimeout(None)


def netlink_drain(s: dict) -> None:
    """Link notifications that came meanwhile (another program changed a link) are read, not left queued."""
    while True:
        try:
            s["route"].recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def netlink_check(s: dict, n: int) -> list[str]:
    bad = []
    if s["route"].getsockname()[0] != s["port"]:
        bad.append(f"route port id {s['route'].getsockname()[0]}, was {s['port']}")
    links = _links(s["route"], 1000 + n)
    if isinstance(links, str):
        bad.append(links)
    elif socket.if_nametoindex("lo") not in links:
        bad.append(f"lo not among the links {sorted(links)}")
    names = (s["server"].getsockname(), s["client"].getsockname(), s["generic"].getsockname())
    if names != s["names"]:
        bad.append(f"names {names}, were {s['names']}")
    s["client"].send(f"hello {n}".encode())
    if (why := wait_for(s["server"], lambda m: m == f"hello {n}".encode(), "USERSOCK unicast")) is not None:
        bad.append(why)
    netlink_drain(s)
    return bad


KINDS = {"udp": (udp_setup, udp_check), "raw": (raw_setup, raw_check), "packet": (packet_setup, packet_check),
         "netlink": (netlink_setup, netlink_check)}


def main() -> int:
    kind, extra = sys.argv[1], (sys.argv[2:] or [""])[0]
    setup, check = KINDS[kind]
    state = setup(extra)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # taken by sigwait only
    print(f"READY pid={os.getpid()}", flush=True)
    for n in itertools.count(1):
        signal.sigwait({signal.SIGUSR1})
        bad = check(state, n) + options_changed()
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS rawsk {kind} round={n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
