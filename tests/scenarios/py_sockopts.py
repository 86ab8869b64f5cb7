"""Sockets with options a program tunes, each checked by the process itself after a restore.

A TCP listener, an established TCP pair (both ends in the process), a UDP IPv4 socket, a UDP IPv6 socket
(when ::1 exists) and a unix stream socketpair, each with options set away from their defaults: priority,
mark, linger, timeouts, bound device, keepalive counts, congestion control, TOS/TTL/traffic class, fixed
buffer sizes, SO_PASSCRED, a peek offset, multicast TTL.  Prints ``READY``.  On SIGUSR1 it reads every
option back and prints ``PASS sockopts round=N`` or ``FAIL name: want X got Y``.  With the argument
``filter`` the UDP socket also gets a classic BPF filter (which ckpt refuses to dump).
"""

import ctypes
import os
import signal
import socket
import struct
import sys

SO_PRIORITY, SO_MARK, SO_PASSCRED, SO_PEEK_OFF, SO_ATTACH_FILTER = 12, 36, 16, 42, 26
TCP_CONGESTION, TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT = 13, 18, 25
IP_FREEBIND, IPV6_TCLASS = 15, 67
checks: list[tuple[str, socket.socket, int, int, int, object]] = []  # name, sock, level, option, buflen, value


def setting(name: str, sock: socket.socket, level: int, opt: int, value: object) -> None:
    """Set an option and remember what getsockopt must give back (as read right after setting it)."""
    sock.setsockopt(level, opt, value)
    buflen = len(value) if isinstance(value, bytes) else 0
    checks.append((name, sock, level, opt, buflen, sock.getsockopt(level, opt, buflen) if buflen
                   else sock.getsockopt(level, opt)))


def main() -> int:
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    setting("listener SO_REUSEADDR", lst, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    setting("listener IP_FREEBIND", lst, socket.IPPROTO_IP, IP_FREEBIND, 1)
    setting("listener TCP_DEFER_ACCEPT", lst, socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    setting("client SO_KEEPALIVE", cli, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    setting("client TCP_KEEPIDLE", cli, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33)
    setting("client TCP_KEEPCNT", cli, socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    setting("client TCP_USER_TIMEOUT", cli, socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 12345)
    setting("client TCP_NODELAY", cli, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    setting("client SO_LINGER", cli, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 7))
    setting("client TCP_CONGESTION", cli, socket.IPPROTO_TCP, TCP_CONGESTION, b"reno".ljust(16, b"\0"))
    setting("server IP_TOS", srv, socket.IPPROTO_IP, socket.IP_TOS, 0x10)  # sets the priority too: first
    setting("server SO_PRIORITY", srv, socket.SOL_SOCKET, SO_PRIORITY, 5)
    setting("server SO_MARK", srv, socket.SOL_SOCKET, SO_MARK, 0x42)
    setting("server TCP_NOTSENT_LOWAT", srv, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 65536)
    setting("server SO_RCVBUF", srv, socket.SOL_SOCKET, socket.SO_RCVBUF, 100000)
    setting("server SO_SNDTIMEO", srv, socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 3, 500000))
    cli.sendall(b"queued-to-server")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    setting("udp SO_BROADCAST", udp, socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    setting("udp IP_TTL", udp, socket.IPPROTO_IP, socket.IP_TTL, 17)
    setting("udp IP_MULTICAST_TTL", udp, socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 3)
    setting("udp SO_BINDTODEVICE", udp, socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo".ljust(16, b"\0"))
    setting("udp SO_SNDBUF", udp, socket.SOL_SOCKET, socket.SO_SNDBUF, 50000)
    setting("udp SO_RCVTIMEO", udp, socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
    udp.bind(("127.0.0.1", 0))
    socks = [lst, cli, srv, udp]
    try:
        udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp6.bind(("::1", 0))
        setting("udp6 IPV6_TCLASS", udp6, socket.IPPROTO_IPV6, IPV6_TCLASS, 0x20)
        setting("udp6 IPV6_UNICAST_HOPS", udp6, socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 9)
        socks.append(udp6)
    except OSError:
        pass  # no ::1 here
    ux, uy = socket.socketpair()
    setting("unix SO_PASSCRED", ux, socket.SOL_SOCKET, SO_PASSCRED, 1)
    setting("unix SO_PEEK_OFF", uy, socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    setting("unix SO_RCVLOWAT", uy, socket.SOL_SOCKET, socket.SO_RCVLOWAT, 3)
    socks += [ux, uy]

    if sys.argv[1:] == ["filter"]:  # a classic BPF program on the UDP socket: "ret #0xffffffff" (take all)
        prog = struct.pack("HBBI", 0x06, 0, 0, 0xFFFFFFFF)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", 1, ctypes.addressof(buf))
        udp.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    # SIGUSR1 is taken by sigwait, never by a handler: a handler run between the restore and the
    # restarted pause() would leave pause() blocked (issue: ckpt restarts it instead of EINTR).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print(f"READY pid={os.getpid()}", flush=True)
    n = 0
    while True:
        signal.sigwait({signal.SIGUSR1})
        n += 1
        bad = []
        for name, sock, level, opt, buflen, want in checks:
            got = sock.getsockopt(level, opt, buflen) if buflen else sock.getsockopt(level, opt)
            if got != want:
                bad.append(f"{name}: want {want!r} got {got!r}")
        if srv.recv(100, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b"queued-to-server":
            bad.append("the server's queued bytes")
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS sockopts round={n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
