"""UDP sockets that joined multicast groups on lo, with source filters; each SIGUSR1 checks every membership.

IPv4: 239.1.2.3 from any source (IP_ADD_MEMBERSHIP), 239.1.2.4 from 127.0.0.2 only
(IP_ADD_SOURCE_MEMBERSHIP), 239.1.2.5 from any source but 127.0.0.9 (MCAST_JOIN_GROUP then
MCAST_BLOCK_SOURCE); IPv6 (when the host has it): ff15::42 (IPV6_JOIN_GROUP).  The check asks
the kernel for each group's filter (getsockopt MCAST_MSFILTER: EADDRNOTAVAIL when not a member)
and that a group never joined is not there.  Prints ``READY pid=PID``, then ``PASS mcast round=N``
or ``FAIL ...``.
"""

import os
import signal
import socket
import struct
import sys

MCAST_JOIN_GROUP, MCAST_BLOCK_SOURCE, MCAST_MSFILTER = 42, 43, 48
IP_ADD_SOURCE_MEMBERSHIP = 39
LO = socket.if_nametoindex("lo")


def storage(family: int, address: str) -> bytes:
    if family == socket.AF_INET:
        raw = struct.pack("=HH4s", family, 0, socket.inet_pton(family, address))
    else:
        raw = struct.pack("=HHI16sI", family, 0, 0, socket.inet_pton(family, address), 0)
    return raw.ljust(128, b"\0")


def filter_of(sock: socket.socket, family: int, group: str) -> tuple[int, list[str]] | None:
    """(mode, sources) of the socket's membership in ``group`` on lo, None if it is not a member."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    head = struct.pack("=I4x128sII", LO, storage(family, group), 0, 4)
    buf = ctypes.create_string_buffer(head + bytes(128 * 4))
    size = ctypes.c_uint32(len(buf))
    level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
    if libc.getsockopt(sock.fileno(), level, MCAST_MSFILTER, buf, ctypes.byref(size)):
        return None
    mode, n = struct.unpack_from("=II", buf.raw, 136)
    srcs = []
    for i in range(n):
        ss = buf.raw[144 + 128 * i:144 + 128 * (i + 1)]
        srcs.append(socket.inet_ntop(family, ss[4:8] if family == socket.AF_INET else ss[8:24]))
    return mode, srcs


def main() -> int:
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v4.bind(("0.0.0.0", 0))
    lo_addr = socket.inet_aton("127.0.0.1")
    v4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("239.1.2.3") + lo_addr)
    # struct ip_mreq_source: multiaddr, interface, sourceaddr
    v4.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP,
                  socket.inet_aton("239.1.2.4") + lo_addr + socket.inet_aton("127.0.0.2"))
    v4.setsockopt(socket.IPPROTO_IP, MCAST_JOIN_GROUP, struct.pack("=I4x128s", LO, storage(socket.AF_INET, "239.1.2.5")))
    # struct group_source_req: interface, group, source
    v4.setsockopt(socket.IPPROTO_IP, MCAST_BLOCK_SOURCE, struct.pack("=I4x128s128s", LO, storage(
        socket.AF_INET, "239.1.2.5"), storage(socket.AF_INET, "127.0.0.9")))
    want = [(v4, socket.AF_INET, "239.1.2.3", (0, [])), (v4, socket.AF_INET, "239.1.2.4", (1, ["127.0.0.2"])),
            (v4, socket.AF_INET, "239.1.2.5", (0, ["127.0.0.9"])), (v4, socket.AF_INET, "239.1.2.6", None)]
    socks = [v4]
    try:
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, "ff15::42")
                      + struct.pack("=I", LO))
        want.append((v6, socket.AF_INET6, "ff15::42", (0, [])))
        socks.append(v6)
    except OSError:
        pass  # no IPv6 here
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print(f"READY pid={os.getpid()} v6={int(len(socks) > 1)}", flush=True)
    n = 0
    while True:
        signal.sigwait({signal.SIGUSR1})
        n += 1
        bad = [f"{group}: want {w} got {got}" for sock, family, group, w in want
               if (got := filter_of(sock, family, group)) != w]
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS mcast round={n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
