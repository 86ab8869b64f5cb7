"""Sockets with options a program tunes, each checked by the process itself after a restore.

A TCP listener, an established TCP pair (both ends in the process), a UDP IPv4 socket, a UDP IPv6 socket
(when ::1 exists) and a unix stream socketpair, each with options set away from their defaults: priority,
mark, linger, timeouts, bound device, keepalive counts, congestion control, TOS/TTL/traffic class, fixed
buffer sizes, SO_PASSCRED, a peek offset, multicast TTL.  Then every option of issue 17 on each kind of
socket it applies to (:func:`issue17_sockets`): three SO_REUSEPORT listeners on one port (they must come back
on it), listeners and UDP sockets bound with IP_FREEBIND / IPV6_FREEBIND to an address the host does not
have, established connections with TCP_CORK, unix sockets with SO_PASSCRED / SO_PASSSEC.  Prints ``READY``.  On SIGUSR1 it reads every
option back and prints ``PASS sockopts round=N`` or ``FAIL name: want X got Y``.  With the argument
``filter`` the UDP socket also gets a classic BPF filter, locked (SO_LOCK_FILTER), and a TCP and a unix socket
a longer one: checked after the restore with SO_GET_FILTER.  With ``ebpf`` the UDP socket gets an eBPF program
(SO_ATTACH_BPF), which ckpt refuses to dump.
"""

import ctypes
import os
import select
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


SO_PASSSEC, SO_TIMESTAMP, SO_TIMESTAMPNS, SO_TIMESTAMPING, SO_BUF_LOCK = 34, 29, 35, 37, 72
IP_TRANSPARENT, IPV6_FREEBIND = 19, 78
#: SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
TIMESTAMPING = 0x8 | 0x10


def common(name: str, sock: socket.socket, v6: bool, prio: int) -> None:
    """The options every kind of socket has, each away from its default."""
    setting(f"{name} SO_MARK", sock, socket.SOL_SOCKET, SO_MARK, 0x100 + prio)
    setting(f"{name} SO_PRIORITY", sock, socket.SOL_SOCKET, SO_PRIORITY, prio)
    setting(f"{name} SO_RCVBUF", sock, socket.SOL_SOCKET, socket.SO_RCVBUF, 70000 + prio)
    setting(f"{name} SO_SNDBUF", sock, socket.SOL_SOCKET, socket.SO_SNDBUF, 80000 + prio)
    setting(f"{name} SO_RCVLOWAT", sock, socket.SOL_SOCKET, socket.SO_RCVLOWAT, 2)
    # one or the other: SO_TIMESTAMPNS makes SO_TIMESTAMP read 0
    setting(f"{name} SO_TIMESTAMP{'NS' if prio % 2 else ''}", sock, socket.SOL_SOCKET,
            SO_TIMESTAMPNS if prio % 2 else SO_TIMESTAMP, 1)
    setting(f"{name} SO_TIMESTAMPING", sock, socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING)
    if sock.family == socket.AF_UNIX:  # inet sockets refuse these (EOPNOTSUPP)
        setting(f"{name} SO_PASSCRED", sock, socket.SOL_SOCKET, SO_PASSCRED, 1)
        setting(f"{name} SO_PASSSEC", sock, socket.SOL_SOCKET, SO_PASSSEC, 1)
        return
    setting(f"{name} SO_BINDTODEVICE", sock, socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo".ljust(16, b"\0"))
    if v6:
        setting(f"{name} IPV6_TCLASS", sock, socket.IPPROTO_IPV6, IPV6_TCLASS, 0x28)
        setting(f"{name} IPV6_UNICAST_HOPS", sock, socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 21)
        setting(f"{name} IPV6_TRANSPARENT", sock, socket.IPPROTO_IPV6, 75, 1)
    else:
        setting(f"{name} IP_TTL", sock, socket.IPPROTO_IP, socket.IP_TTL, 33)
        setting(f"{name} IP_TRANSPARENT", sock, socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    # IP_TOS last but one: it sets the priority; SO_PRIORITY again after it (a restore keeps this order)
    setting(f"{name} IP_TOS", sock, socket.IPPROTO_IP, socket.IP_TOS, 0x08)
    setting(f"{name} SO_PRIORITY", sock, socket.SOL_SOCKET, SO_PRIORITY, prio)
    if sock.type == socket.SOCK_STREAM:
        setting(f"{name} SO_KEEPALIVE", sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        setting(f"{name} TCP_KEEPIDLE", sock, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 41)
        setting(f"{name} TCP_KEEPINTVL", sock, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7)
        setting(f"{name} TCP_KEEPCNT", sock, socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
        setting(f"{name} SO_LINGER", sock, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3))
        setting(f"{name} TCP_NODELAY", sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setting(f"{name} TCP_USER_TIMEOUT", sock, socket.IPPROTO_TCP, TCP_USER_TIMEOUT, 23456)
        setting(f"{name} TCP_CONGESTION", sock, socket.IPPROTO_TCP, TCP_CONGESTION, b"reno".ljust(16, b"\0"))
        setting(f"{name} TCP_NOTSENT_LOWAT", sock, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 32768)


def issue17_sockets() -> list[socket.socket]:
    """Every option of issue 17 on each kind of socket it applies to: TCP listeners (three on one port with
    SO_REUSEPORT, one bound with IP_FREEBIND / IPV6_FREEBIND to an address this host does not have), established
    TCP connections with TCP_CORK, UDP, unix; IPv4 and IPv6 (when ::1 exists)."""
    out = []
    families = [(socket.AF_INET, "127.0.0.1", "192.0.2.17", False)]
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
        families.append((socket.AF_INET6, "::1", "2001:db8::17", True))
    except OSError:
        pass
    for family, host, absent, v6 in families:
        tag = "6" if v6 else "4"
        group, port = [], 0
        for k in range(3):  # several listeners on one port
            lst = socket.socket(family, socket.SOCK_STREAM)
            setting(f"lst{tag}.{k} SO_REUSEADDR", lst, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            setting(f"lst{tag}.{k} SO_REUSEPORT", lst, socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if v6:
                setting(f"lst{tag}.{k} IPV6_V6ONLY", lst, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            common(f"lst{tag}.{k}", lst, v6, 3 + k)
            lst.bind((host, port))
            port = lst.getsockname()[1]
            lst.listen(8)
            group.append(lst)
        ports.append((f"lst{tag} group", group, port))
        free = socket.socket(family, socket.SOCK_STREAM)
        if v6:
            setting(f"free{tag} IPV6_FREEBIND", free, socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            setting(f"free{tag} IP_FREEBIND", free, socket.IPPROTO_IP, IP_FREEBIND, 1)
        free.bind((absent, 0))
        free.listen(2)
        ports.append((f"free{tag}", [free], free.getsockname()[1]))
        cli = socket.socket(family, socket.SOCK_STREAM)
        common(f"cli{tag}", cli, v6, 2)
        cli.connect((host, port))
        ready, _, _ = select.select(group, [], [])  # SO_REUSEPORT: any of the group may have it
        srv, _ = ready[0].accept()
        common(f"srv{tag}", srv, v6, 1)
        setting(f"srv{tag} TCP_CORK", srv, socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        if v6:
            setting(f"udp{tag} IPV6_V6ONLY", udp, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            setting(f"udp{tag} IPV6_FREEBIND", udp, socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            setting(f"udp{tag} IP_FREEBIND", udp, socket.IPPROTO_IP, IP_FREEBIND, 1)
        common(f"udp{tag}", udp, v6, 4)
        udp.bind((absent, 0))
        out += [*group, free, cli, srv, udp]
    for stype, name in ((socket.SOCK_STREAM, "ustream"), (socket.SOCK_DGRAM, "udgram")):
        a, b = socket.socketpair(socket.AF_UNIX, stype)
        common(f"{name}", a, False, 5)
        out += [a, b]
    return out


SO_LOCK_FILTER, SO_ATTACH_BPF, BPF_PROG_LOAD, BPF_PROG_TYPE_SOCKET_FILTER = 44, 50, 5, 1
libc = ctypes.CDLL(None, use_errno=True)
#: (what, socket, classic program it must have)
filtered: list[tuple[str, socket.socket, bytes]] = []


def get_filter(sock: socket.socket, count: int) -> bytes:
    """SO_GET_FILTER: its length is in instructions, so a bytes buffer from Python's getsockopt would overflow."""
    buf = ctypes.create_string_buffer(count * 8)
    n = ctypes.c_uint32(count)
    if libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER, buf, ctypes.byref(n)):
        return b"errno %d" % ctypes.get_errno()
    return buf.raw[:n.value * 8]


def ebpf_take_all() -> int:
    """An eBPF socket filter program (bpf(BPF_PROG_LOAD)) that keeps every packet; its fd."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, -1) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = -1; exit
    code, lic = ctypes.create_string_buffer(insns, len(insns)), ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("=IIQQ", BPF_PROG_TYPE_SOCKET_FILTER, 2, ctypes.addressof(code), ctypes.addressof(lic))
    attr = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    fd = libc.syscall(321, BPF_PROG_LOAD, attr, 128)  # __NR_bpf
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf(BPF_PROG_LOAD)")
    return fd


#: (what, listeners, port they must be bound to): checked after a restore with the options.
ports: list[tuple[str, list[socket.socket], int]] = []


def main() -> int:
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    setting("listener SO_REUSEADDR", lst, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    setting("listener IP_FREEBIND", lst, socket.IPPROTO_IP, IP_FREEBIND, 1)
    setting("listener TCP_DEFER_ACCEPT", lst, socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    cli = socket.create_connection(lst.getsockname())
    cli.sendall(b"queued-to-server")  # before accept: a deferred accept (TCP_DEFER_ACCEPT) waits for data
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
    socks += issue17_sockets()
    ux, uy = socket.socketpair()
    setting("unix SO_PASSCRED", ux, socket.SOL_SOCKET, SO_PASSCRED, 1)
    setting("unix SO_PEEK_OFF", uy, socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    setting("unix SO_RCVLOWAT", uy, socket.SOL_SOCKET, socket.SO_RCVLOWAT, 3)
    socks += [ux, uy]

    if sys.argv[1:] == ["filter"]:  # a classic BPF program on the UDP socket, locked: "ret #0xffffffff" (take all)
        prog = struct.pack("HBBI", 0x06, 0, 0, 0xFFFFFFFF)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", 1, ctypes.addressof(buf))
        udp.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        setting("udp SO_LOCK_FILTER", udp, socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
        filtered.append(("udp", udp, prog))
        for name, sock in (("cli", cli), ("unix", ux)):  # a longer one: "ld len; jge #1, take all, drop"
            prog = struct.pack("=HBBI", 0x80, 0, 0, 0) + struct.pack("=HBBI", 0x35, 0, 1, 1) \
                + struct.pack("=HBBI", 0x06, 0, 0, 0xFFFF) + struct.pack("=HBBI", 0x06, 0, 0, 0)
            buf = ctypes.create_string_buffer(prog)
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", 4, ctypes.addressof(buf)))
            filtered.append((name, sock, prog))
    if sys.argv[1:] == ["ebpf"]:  # an eBPF program on the UDP socket: "r0 = -1; exit" (take all)
        udp.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, ebpf_take_all())
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
        for what, sock, prog in filtered:
            if (got := get_filter(sock, len(prog) // 8)) != prog:
                bad.append(f"{what} SO_GET_FILTER: want {prog.hex()} got {got.hex()}")
        for what, group, port in ports:
            if any(x.getsockname()[1] != port for x in group):
                bad.append(f"{what}: ports {[x.getsockname()[1] for x in group]}, want {port}")
        if srv.recv(100, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b"queued-to-server":
            bad.append("the server's queued bytes")
        print(f"FAIL {'; '.join(bad)}" if bad else f"PASS sockopts round={n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
