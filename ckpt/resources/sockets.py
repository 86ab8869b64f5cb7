"""Sockets: bound and listening TCP/UDP (IPv4/IPv6) re-created with their options; what every socket tells.

Unix sockets are :mod:`ckpt.resources.unix`'s: this module only records
what such a socket says about itself (type, names, options, a listener's
backlog), and the unix module links them to their peers across the tree.
Packet and netlink sockets are :mod:`ckpt.resources.packet`'s and
:mod:`ckpt.resources.netlink`'s: :func:`describe` hands them over.

Dump looks at the socket from outside: ``pidfd_getfd`` lends the dumper a
duplicate of the target's descriptor, on which getsockname, getpeername and
getsockopt (SO_TYPE, SO_PROTOCOL, SO_DOMAIN, SO_ACCEPTCONN, TCP_INFO's state)
answer exactly what the kernel holds — no parsing of /proc/net/* and no
injection.  The duplicate is closed at once; the target's socket is untouched.

What can be re-created is a socket whose state lives in its local address and
options: a TCP listener (its queue of not-yet-accepted connections is *not*
kept: those clients see a reset), a UDP socket (bound, and connected to a
peer if it was), a raw socket (IPv4 or IPv6, of its protocol; bound, connected
— the peer read from /proc/PID/net/raw, :mod:`ckpt.procfs.netraw`), each UDP or
raw socket with the directions it was shut down in (:func:`shutdown_of`).  An established TCP connection is
kept alive with ``--tcp-established`` (:mod:`ckpt.resources.tcp`: TCP_REPAIR
and a network lock); otherwise it is refused, naming the fd and both ends,
unless ``tcp_close`` — then, like CRIU's ``--tcp-close``, it comes back as a
closed socket of the same family: a connection its peer reset (the first read
or write gives ECONNRESET, then reads EOF and writes EPIPE:
:func:`ckpt.resources.tcp_states.reset_closed`), and the program handles it as
a dropped connection.

Restore is injected into the helper: ``socket``, each saved option with
``setsockopt``, ``bind``, ``listen`` (or ``connect`` for a connected UDP
socket).

A listener comes back with the backlog its program gave to ``listen()``: it
bounds the accept queue and is what ``ss -l`` shows as Send-Q.  getsockopt
cannot read it, sock_diag can (:mod:`ckpt.kernel.sock_diag`, asked by inode
from the dumper: the kernel filters by port, or looks the unix socket up, so
each query returns just that socket).  Where sock_diag cannot tell (no
support in the kernel, the target in another network namespace) the image
has no backlog, a note says so, and restore uses ``SOMAXCONN`` — as for an
image written before the backlog was recorded.

A classic BPF filter (SO_ATTACH_FILTER) is read back with SO_GET_FILTER and
attached again before the other options (SO_LOCK_FILTER would forbid it); an
eBPF one (SO_ATTACH_BPF) cannot be read back from a socket, and is refused.

Not kept (inet): a buffer size the kernel tunes by itself (one the program
fixed, SO_BUF_LOCK, is), multicast memberships, queued datagrams.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import termios
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..control.inject import Injector, Scratch
from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2, process_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import dup_from
from ..kernel import sockopts
from ..kernel import tcp_repair as tr
from ..kernel.sock_diag import inet_shutdown, listen_backlogs
from ..procfs.netraw import raw_socket
from . import mcast, tcp, tcp_states
from ..tolerance import lose
from .fdkind import FdDump, FdKind, Opener, refuse

__all__ = ["TCP_LISTEN", "TCP_ESTABLISHED", "TCP_CLOSE", "Peek", "peek", "unix_name", "KIND",
           "dump", "describe", "restore", "set_status_flags", "setopts", "backlog_of", "changed_options",
           "option_lines", "inet_lines", "account_agrees"]

K = files_pb2.FileEntry.Kind
#: TCP_* states (include/net/tcp_states.h), as TCP_INFO's first byte reports them.
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
_SO_DOMAIN, _SO_PROTOCOL, _SO_PEEK_OFF = 39, 38, 42
#: struct tcp_info up to tcpi_sacked: the state byte, then (for a listener) tcpi_unacked = sk_ack_backlog
#: (connections ready for accept) and tcpi_sacked = sk_max_ack_backlog (the backlog), at offsets 24 and 28.
_TCP_INFO_LISTEN = struct.Struct("<B23xII")
_INT = struct.Struct("<i")
#: Inet socket types whose shutdown bits and queued datagrams ckpt reads (a stream's are its TCP state's).
_DATAGRAM = (socket.SOCK_DGRAM, socket.SOCK_RAW)
SIOCGIFINDEX = 0x8933
#: struct ifreq: the name, then (for SIOCGIFINDEX) the index; 40 bytes in all.
_IFREQ = struct.Struct("<16si20x")


@dataclass(frozen=True)
class Peek:
    """What the dumper's duplicate of the socket told."""

    family: int
    type: int
    protocol: int
    listening: bool
    tcp_state: int
    local: bytes
    peer: bytes
    inode: int
    #: A TCP listener's connections ready for accept() and its backlog (TCP_INFO, whose tcpi_unacked and
    #: tcpi_sacked mean these for a listener); -1 for any other socket.
    accept_queue: int = -1
    max_backlog: int = -1
    #: A datagram socket has datagrams waiting to be read.
    queued: bool = False


def _sockaddr(family: int, addr: object) -> bytes:
    """Python's getsockname() result back into the struct sockaddr the kernel wants."""
    if family == socket.AF_INET:
        host, port = addr  # type: ignore[misc]
        return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_pton(socket.AF_INET, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port, flowinfo, scope = addr  # type: ignore[misc]
        host = host.split("%", 1)[0]
        return (struct.pack("<H", socket.AF_INET6) + struct.pack(">H", port) + struct.pack(">I", flowinfo)
                + socket.inet_pton(socket.AF_INET6, host) + struct.pack("<I", scope))
    raise ValueError(f"address family {family}")


@contextmanager
def borrowed(pid: int, fd: int) -> Iterator[socket.socket]:
    """A duplicate of the target's socket ``fd`` in our process (``pidfd_getfd``: the same socket), closed after."""
    ours = dup_from(pid, fd)
    s = socket.socket(fileno=ours)
    try:
        yield s
    finally:
        s.close()


def peek(pid: int, fd: int) -> tuple[Peek, list[files_pb2.SockOpt]]:
    with borrowed(pid, fd) as s:
        ours = s.fileno()
        inode = os.fstat(ours).st_ino
        family = s.getsockopt(socket.SOL_SOCKET, _SO_DOMAIN)
        stype = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto = s.getsockopt(socket.SOL_SOCKET, _SO_PROTOCOL)
        listening = bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        tcp_state, accept_queue, max_backlog = 0, -1, -1
        if family in (socket.AF_INET, socket.AF_INET6) and stype == socket.SOCK_STREAM:
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LISTEN.size)
            tcp_state = info[0]
            if tcp_state == TCP_LISTEN:
                accept_queue, max_backlog = _TCP_INFO_LISTEN.unpack_from(info)[1:]
        queued = family in (socket.AF_INET, socket.AF_INET6) and stype in _DATAGRAM and _has_datagram(s)
        if family == socket.AF_UNIX:
            local = unix_name(s.getsockname())
            try:
                peer = unix_name(s.getpeername())
            except OSError:
                peer = b""
        elif family in (socket.AF_INET, socket.AF_INET6):
            name = s.getsockname()
            # never bound (any address, port 0; a raw socket's "port" is its protocol): nothing to bind again —
            # binding that would take a port
            local = b"" if (name[1] == 0 or stype == socket.SOCK_RAW) \
                and ipaddress.ip_address(name[0].split("%", 1)[0]).is_unspecified \
                else _sockaddr(family, name)
            try:
                peer = _sockaddr(family, s.getpeername())
            except OSError:
                raw = _raw_peer(pid, family, inode) if stype == socket.SOCK_RAW else None
                peer = _sockaddr(family, raw) if raw else b""
        else:
            local = peer = b""
        opts = changed_options(s)
        if (prog := _filter(pid, fd, ours)) is not None:
            opts.insert(0, prog)  # before SO_LOCK_FILTER, which would forbid attaching it
        return Peek(family, stype, proto, listening, tcp_state, local, peer, inode, accept_queue, max_backlog,
                    queued), opts


#: The room a restore's scratch page leaves a classic filter's instructions (BPF_MAXINSNS is 4096).
_MAX_FILTER = 1024


#: The image feature of sockets handed over (:mod:`ckpt.image.compat`).
HANDED_FEATURE = "handed-sockets"


def _port(sockaddr: bytes) -> int:
    """The port of a raw ``sockaddr_in``/``sockaddr_in6`` (0: unbound)."""
    return int.from_bytes(sockaddr[2:4], "big") if len(sockaddr) >= 4 else 0


def _filter(pid: int, fd: int, ours: int) -> files_pb2.SockOpt | None:
    """The classic BPF filter of the socket (SO_GET_FILTER), as the option that attaches it again; None for no
    filter.  An eBPF program (SO_ATTACH_BPF) is refused: the kernel gives no way to read it back from a socket."""
    n = sockopts.filter_length(ours)
    if n == 0:
        return None
    if n < 0:
        raise refuse(pid, fd, "a socket with an eBPF program attached (SO_ATTACH_BPF / SO_ATTACH_REUSEPORT_EBPF)",
                     "an eBPF socket filter cannot be read back (SO_GET_FILTER gives only classic ones): it would "
                     "come back unfiltered")
    if n > _MAX_FILTER:
        raise refuse(pid, fd, f"a socket with a classic BPF filter of {n} instructions",
                     f"ckpt restores filters of up to {_MAX_FILTER} instructions")
    return files_pb2.SockOpt(level=socket.SOL_SOCKET, name=sockopts.SO_ATTACH_FILTER,
                             value=sockopts.get_filter(ours, n))


def _filter_line(sock: socket.socket) -> tuple[str, str]:
    """The classic filter's instructions for the self-check (``default``: none; eBPF, refused at dump: ``ebpf``)."""
    n = sockopts.filter_length(sock.fileno())
    return "SO_GET_FILTER", ("default" if n == 0 else "ebpf" if n < 0 else sockopts.get_filter(sock.fileno(), n).hex())


def _raw_peer(pid: int, family: int, inode: int) -> tuple | None:
    """The peer a raw socket is connect()ed to, as getpeername would give it (it cannot tell:
    :mod:`ckpt.procfs.netraw`), with port 0; None when it is not connected."""
    line = raw_socket(pid, family, inode)
    if line is None or line.state != TCP_ESTABLISHED:
        return None
    host = socket.inet_ntop(family, line.remote)
    return (host, 0) if family == socket.AF_INET else (host, 0, 0, 0)


def _fresh_values(sock: socket.socket) -> dict[tuple[int, int], str]:
    """Every option of a new socket of ``sock``'s kind (family, type, protocol), here: what a program that
    set nothing would have."""
    family, stype, protocol = (sock.getsockopt(socket.SOL_SOCKET, n) for n in (_SO_DOMAIN, socket.SO_TYPE,
                                                                             _SO_PROTOCOL))
    with socket.socket(family, stype | socket.SOCK_CLOEXEC, protocol) as fresh:
        return {(o.level, o.name): text for o, _, text in sockopts.read_all(fresh)}


def option_lines(sock: socket.socket) -> list[tuple[str, str]]:
    """(option, value) of every option the socket has, ``default`` for one with a new socket's value here (so
    that an option a program never set compares equal on a host whose defaults differ); for the self-check."""
    fresh = _fresh_values(sock)
    return [*((o.label, "default" if fresh.get((o.level, o.name)) == text else text)
              for o, _, text in sockopts.read_all(sock)), _filter_line(sock)]


def _endpoint(family: int, addr: object) -> str:
    """An inet address as the account prints it: ``host:port`` (IPv6 ``[host]:port``, flow label and scope kept)."""
    if family == socket.AF_INET6:
        host, port, flowinfo, scope = addr  # type: ignore[misc]
        return f"[{host}]:{port} flowinfo {flowinfo} scope {scope}"
    host, port = addr  # type: ignore[misc]
    return f"{host}:{port}"


def inet_lines(sock: socket.socket, pid: int = 0) -> list[tuple[str, str]]:
    """What an inet socket tells of its state, for the self-check: its local and peer address, a TCP socket's
    state (TCP_INFO's first byte), a listener's waiting connections and backlog (TCP_INFO's tcpi_unacked and
    tcpi_sacked), a connection's bytes queued to read, to be acknowledged and never sent (SIOCINQ, SIOCOUTQ,
    SIOCOUTQNSD), whether its reading side is shut (POLLRDHUP), whether a UDP socket has a datagram waiting.
    Nothing is read off a queue (a peek honours SO_PEEK_OFF, :func:`_has_datagram`); a UDP or raw socket's
    shutdown bits, a raw socket's protocol and the peer it is connected to (from ``pid``'s /proc/PID/net/raw:
    getpeername cannot tell).  None for another family."""
    family, stype = (sock.getsockopt(socket.SOL_SOCKET, n) for n in (_SO_DOMAIN, socket.SO_TYPE))
    if family not in (socket.AF_INET, socket.AF_INET6):
        return []
    try:
        peer = _endpoint(family, sock.getpeername())
    except OSError:
        raw = _raw_peer(pid, family, os.fstat(sock.fileno()).st_ino) if stype == socket.SOCK_RAW and pid else None
        peer = _endpoint(family, raw) if raw else "none"
    lines = [("local", _endpoint(family, sock.getsockname())), ("peer", peer)]
    if stype == socket.SOCK_STREAM:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LISTEN.size)
        state, waiting, backlog = _TCP_INFO_LISTEN.unpack_from(info)
        lines.append(("state", tcp.TCP_STATES.get(state, str(state))))
        if state == TCP_LISTEN:
            return lines + [("waiting", str(waiting)), ("backlog", str(backlog))]
        return lines + [("inq", str(tr.inq(sock))), ("outq", str(tr.outq(sock))),
                        ("outq_unsent", str(tr.outq_notsent(sock))),
                        ("rdhup", "yes" if tcp_states.rdhup(sock) else "no")]
    if stype == socket.SOCK_RAW:
        lines.append(("protocol", str(sock.getsockopt(socket.SOL_SOCKET, _SO_PROTOCOL))))
    if stype in _DATAGRAM:
        lines.append(("queued", "yes" if _has_datagram(sock) else "no"))
        if bits := shutdown_of(sock):  # only when set: an image of an older ckpt has no such line
            lines.append(("shutdown", str(bits)))
        if pid:
            lines += mcast.lines(pid, sock)
    return lines


def account_agrees(pid: int, account: process_pb2.Observed, fds: "tuple[files_pb2.FdEntry, ...]",
                   entries: "tuple[files_pb2.FileEntry, ...]") -> None:
    """The dump's account of ``pid`` (:mod:`ckpt.observed`, read last) against its inet sockets' records (read
    first): a connection that reached a listener, or a datagram a UDP socket, in between would be lost without
    the image saying so, and the restore's check would refuse it.  The dump is refused instead, naming it."""
    by_fd = {f.fd: f.file_id for f in fds}
    by_id = {e.id: e for e in entries}
    for section in account.sections:
        kind, _, fd = section.name.partition("/")
        e = by_id.get(by_fd.get(int(fd), -1)) if kind in _QUEUE_LOST else None
        if e is None or e.kind != _QUEUE_LOST[kind][0] or _QUEUE_LOST[kind][1](e):
            continue
        lines = {ln.key: ln.value for ln in section.lines}
        what = ("a connection to it waiting to be accepted" if lines.get("waiting", "0") != "0"
                else "a datagram queued on it" if lines.get("queued") == "yes" else None)
        if what is not None:
            raise Unsupported(f"process {pid}: fd {fd}: {what} arrived while it was being dumped",
                              hint="dump again (with --tolerate listen-queue / udp-queue / raw-queue / packet-queue "
                                   "/ netlink-queue to let such a queue go)")


#: Account sections whose queues :func:`account_agrees` checks: the entry kind, and whether the image lets the
#: queue go.
_QUEUE_LOST: dict[str, tuple[int, Callable[[files_pb2.FileEntry], bool]]] = {
    "inet": (K.INET, lambda e: e.inet.queue_lost or e.inet.tcp_closed or e.inet.handed_over),  # (handed: kept)
    "packet": (K.PACKET, lambda e: e.packet.queue_lost),
    "netlink": (K.NETLINK, lambda e: e.netlink.queue_lost),
}


def changed_options(sock: socket.socket) -> list[files_pb2.SockOpt]:
    """The options a program changed on ``sock`` (their values differ from a new socket's), in the order a
    restore sets them.  A buffer size counts only when the program fixed it (SO_BUF_LOCK; the kernel's own
    growing of it is not a setting): saved as SO_*BUFFORCE with half the value read (the kernel doubles it)."""
    fresh = _fresh_values(sock)
    out = []
    for o, raw, text in sockopts.read_all(sock):
        if not o.settable or text == "auto" or fresh.get((o.level, o.name)) == text:
            continue
        if o.label in ("SO_SNDBUF", "SO_RCVBUF"):
            force = sockopts.SO_SNDBUFFORCE if o.label == "SO_SNDBUF" else sockopts.SO_RCVBUFFORCE
            out.append(files_pb2.SockOpt(level=o.level, name=force, value=_INT.pack(int(text) // 2)))
            continue
        out.append(files_pb2.SockOpt(level=o.level, name=o.name, value=bytes(raw)))
    return out


def _has_datagram(s: socket.socket) -> bool:
    """Is a datagram waiting?  A peek tells (a zero-length one too), unless SO_PEEK_OFF is set: a peek would
    move that offset, so the queued bytes (FIONREAD: the first datagram's) tell instead.  A raw socket has no
    peek offset (EOPNOTSUPP)."""
    try:
        peek_off = s.getsockopt(socket.SOL_SOCKET, _SO_PEEK_OFF)
    except OSError:
        peek_off = -1
    if peek_off >= 0:
        return int.from_bytes(fcntl.ioctl(s.fileno(), termios.FIONREAD, bytes(4)), "little") > 0
    try:
        s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


def shutdown_of(s: socket.socket) -> int:
    """A UDP or raw socket's own RCV_SHUTDOWN (1) / SEND_SHUTDOWN (2) bits: from sock_diag (INET_DIAG_SHUTDOWN),
    which lists every bound or connected UDP socket and, where the kernel has raw_diag, raw sockets.  Where it
    does not (an unbound UDP socket, a kernel without raw_diag), poll tells what a program can see: POLLRDHUP
    is RCV_SHUTDOWN, POLLHUP both; SEND_SHUTDOWN alone changes nothing a program sees there (UDP and raw
    sendmsg ignore it), and is not seen."""
    family, stype, proto = (s.getsockopt(socket.SOL_SOCKET, n) for n in (_SO_DOMAIN, socket.SO_TYPE, _SO_PROTOCOL))
    try:
        bits = inet_shutdown(family, stype, proto, os.fstat(s.fileno()).st_ino)
    except OSError:
        bits = None
    if bits is not None:
        return bits
    p = select.poll()
    p.register(s.fileno(), select.POLLRDHUP)
    events = sum(ev for _, ev in p.poll(0))
    return 3 if events & select.POLLHUP else 1 if events & select.POLLRDHUP else 0


def unix_name(addr: str | bytes) -> bytes:
    """Python's AF_UNIX address (str for a path, bytes for an abstract name) as the raw sun_path bytes."""
    return os.fsencode(addr) if isinstance(addr, str) else bytes(addr)


def _netns_differs(pid: int) -> bool:
    """Is ``pid`` in another network namespace than ours (so out of our sock_diag's sight)?"""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _unix_backlog(pid: int, fd: int, p: Peek, notes: list[str] | None, tolerate: frozenset[str]) -> int | None:
    """A unix listener's backlog from sock_diag (getsockopt has no option for it); None, when it cannot tell
    and the user tolerates that (``unix-diag``), for SOMAXCONN at restore."""
    try:
        found = listen_backlogs(p.family, p.protocol, inode=p.inode).get(p.inode)
        why = ("the process is in another network namespace, which sock_diag does not see" if _netns_differs(pid)
               else "sock_diag does not report it")
    except OSError as exc:
        found, why = None, f"sock_diag failed: {exc.strerror or exc}"
    if found is None:
        lose("unix-diag", tolerate, f"process {pid}: fd {fd}", f"a unix listener whose backlog is not known ({why})",
             notes)
    return found


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """The socket's entry (:func:`describe`); one only a unix socket's queue holds cannot be a live connection."""
    describe(d.pid, d.fd, entry, tcp_close=d.opts.tcp_close, notes=d.opts.notes,
             tcp_session=None if d.in_flight_only else d.opts.tcp_session, tolerate=d.opts.tolerate,
             hand_over=d.opts.hand_over and not d.in_flight_only)
    if d.in_flight_only and entry.inet.HasField("tcp"):
        raise d.refuse("an established TCP connection", "ckpt keeps a connection only while a process holds it: "
                       "dump once the program has received it")


def describe(pid: int, fd: int, entry: files_pb2.FileEntry, *, tcp_close: bool = False,
             notes: list[str] | None = None, tcp_session: "tcp.Session | None" = None,
             tolerate: frozenset[str] = frozenset(), hand_over: bool = False) -> None:
    """Fill ``entry`` (kind, inet/unix details) for the socket at ``fd``; Unsupported for what cannot be re-created.

    A loss the user tolerates (``tolerate``, :mod:`ckpt.tolerance`: a TCP
    listener's waiting connections, a UDP socket's queued datagrams, a unix
    listener's backlog sock_diag cannot report) goes to ``notes``; any other
    is refused.
    ``tcp_session`` (``--tcp-established``): an established TCP connection is
    locked and read in repair mode by :mod:`ckpt.resources.tcp`, to come back alive.
    ``hand_over`` (a migration within one network namespace): a bound TCP or UDP
    socket that is not a connection is marked to be handed to the restore as it
    is (``InetSocket.handed_over``), its queues with it: nothing of them is lost.
    """
    p, opts = peek(pid, fd)
    if p.family in (socket.AF_PACKET, socket.AF_NETLINK):
        from . import netlink, packet  # they build on this module: imported here, not above
        (packet if p.family == socket.AF_PACKET else netlink).describe(pid, fd, entry, p, opts, notes=notes,
                                                                       tolerate=tolerate)
        return
    kinds = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram", socket.SOCK_SEQPACKET: "seqpacket"}
    if p.family in (socket.AF_INET, socket.AF_INET6):
        fam = "IPv4" if p.family == socket.AF_INET else "IPv6"
        inet = files_pb2.InetSocket(family=p.family, type=p.type, protocol=p.protocol, state=p.tcp_state,
                                    src_addr=p.local, dst_addr=p.peer)
        inet.options.extend(opts)
        if p.type == socket.SOCK_STREAM and not p.listening and p.tcp_state != TCP_CLOSE:
            keep = tcp_session is not None and tcp_session.enabled
            if keep and p.tcp_state in tcp_states.KEPT:
                tcp_session.dump(pid, fd, p.family, p.local, p.peer, inet)  # type: ignore[union-attr]
                entry.kind = K.INET
                entry.inet.CopyFrom(inet)
                return
            if not tcp_close:
                conn = f"{fam} TCP connection {tcp.describe(p.family, p.local, p.peer)}"
                if keep or p.tcp_state not in tcp_states.KEPT:
                    raise refuse(pid, fd, f"a {conn} in state {tcp.TCP_STATES.get(p.tcp_state, p.tcp_state)}",
                                  f"{tcp_states.refusal(p.tcp_state, False)}; use --tcp-close "
                                  "(tcp_close=True) to restore it closed, as a dropped connection")
                state = "an established" if p.tcp_state == TCP_ESTABLISHED else \
                    f"a {tcp.TCP_STATES.get(p.tcp_state, p.tcp_state)}"
                raise refuse(pid, fd, f"{state} {conn}",
                              "use --tcp-established (tcp_established=True) to keep it alive across the restore, "
                              "or --tcp-close (tcp_close=True) to restore it closed, as a dropped connection")
            inet.state = TCP_CLOSE
            inet.src_addr = inet.dst_addr = b""  # comes back unbound and unconnected
            inet.tcp_closed = True
        elif p.type not in (socket.SOCK_STREAM, *_DATAGRAM):
            raise refuse(pid, fd, f"an {fam} socket of type {p.type}")
        elif hand_over and p.type in (socket.SOCK_STREAM, socket.SOCK_DGRAM) and _port(p.local):
            inet.handed_over = True  # the same socket goes over: its waiting connections or datagrams with it
            if p.listening and p.max_backlog >= 0:
                inet.backlog = p.max_backlog
        elif p.listening and p.max_backlog >= 0:
            inet.backlog = p.max_backlog
            if p.accept_queue > 0:
                lose("listen-queue", tolerate, f"process {pid}: fd {fd}", f"an {fam} TCP listener on "
                     f"{tcp.endpoint(p.family, p.local)} with {p.accept_queue} connection(s) waiting to be accepted",
                     notes)
                inet.queue_lost = True
        elif p.queued:
            raw = p.type == socket.SOCK_RAW
            lose("raw-queue" if raw else "udp-queue", tolerate, f"process {pid}: fd {fd}",
                 f"an {fam} {f'raw (protocol {p.protocol})' if raw else 'UDP'} socket with datagrams not yet read",
                 notes)
            inet.queue_lost = True
        if p.type in _DATAGRAM:
            with borrowed(pid, fd) as s:
                inet.shutdown = shutdown_of(s)
                mcast.dump(pid, s, inet)
        entry.kind = K.INET
        entry.inet.CopyFrom(inet)
        return
    if p.family == socket.AF_UNIX:
        if p.type not in kinds:
            raise refuse(pid, fd, f"a unix socket of type {p.type}")
        # What the socket itself tells; its peer, queue and accept queue are the business of
        # ckpt.resources.unix, which sees every socket of the tree at once.
        unix = files_pb2.UnixSocket(ino=p.inode, type=p.type, state=TCP_LISTEN if p.listening else 0, name=p.local,
                                    peer_name=p.peer)
        if p.listening and (backlog := _unix_backlog(pid, fd, p, notes, tolerate)) is not None:
            unix.backlog = backlog
        unix.options.extend(o for o in opts if o.level == socket.SOL_SOCKET)
        entry.kind = K.UNIX
        entry.unix.CopyFrom(unix)
        return
    raise refuse(pid, fd, f"a socket of address family {p.family}")


# --- restore -----------------------------------------------------------------

def setopts(inj: Injector, s: Scratch, fd: int, opts: "list[files_pb2.SockOpt] | object") -> None:
    """Each saved option set again, in order; RestoreError naming the one the kernel refuses here."""
    for o in opts:  # type: ignore[attr-defined]
        label = sockopts.label(o.level, o.name)
        value = bytes(o.value)
        if (o.level, o.name) == (socket.SOL_SOCKET, sockopts.SO_ATTACH_FILTER):  # the instructions after their fprog
            s.write(16, value)
            value = sockopts.sock_fprog(len(value) // sockopts.BPF_INSN_SIZE, s.addr + 16)
        s.write(0, value)
        try:
            inj.call(NR.setsockopt, fd, o.level, o.name, s.addr, len(value), name=f"setsockopt({fd}, {label})")
        except OSError as exc:
            raise RestoreError(f"cannot set {label} on a restored socket again: {exc.strerror}",
                               hint="the option's value may need what this host lacks (a network device, "
                                    "a congestion control module, a capability)") from exc


def ifindex_in(inj: Injector, s: Scratch, fd: int, name: str, what: str) -> int:
    """The index of interface ``name`` in the target's network namespace (SIOCGIFINDEX on its socket ``fd``);
    RestoreError naming ``what`` (e.g. "a packet socket was bound to") if it has no such interface."""
    s.write(0, _IFREQ.pack(name.encode(), 0))
    try:
        inj.call(NR.ioctl, fd, SIOCGIFINDEX, s.addr, name=f"ioctl(SIOCGIFINDEX, {name!r})")
    except OSError as exc:
        raise RestoreError(f"{what} interface {name!r}, which this network namespace lacks: "
                           f"{os.strerror(exc.errno or 0)}", hint="create the interface (same name) before the "
                                                                  "restore") from exc
    return _IFREQ.unpack(s.read(0, _IFREQ.size))[1]


def backlog_of(sock: "files_pb2.InetSocket | files_pb2.UnixSocket") -> int:
    """The recorded backlog (0 included); SOMAXCONN when the image has none."""
    return sock.backlog if sock.HasField("backlog") else socket.SOMAXCONN


def set_status_flags(r: Opener, fd: int, entry: files_pb2.FileEntry) -> int:
    """A new socket's O_NONBLOCK and O_ASYNC (socket() takes only the first); ``fd`` back."""
    if entry.flags & (os.O_NONBLOCK | os.O_ASYNC):
        r.inj.call(NR.fcntl, fd, fcntl.F_SETFL, entry.flags & (os.O_NONBLOCK | os.O_ASYNC),
                   name=f"fcntl({fd}, F_SETFL)")
    return fd


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """The inet socket of ``entry`` made again in the target: an established connection by
    :mod:`ckpt.resources.tcp`, one handed over by a migration's source as it is, the rest here.  Unix
    sockets are :mod:`ckpt.resources.unix`'s."""
    if entry.inet.handed_over:
        ours = r.policy.handed.get(entry.id)
        if ours is None:
            raise RestoreError(f"the socket of file {entry.id} ({tcp.endpoint(entry.inet.family, entry.inet.src_addr)}) "
                               "was to be handed over by the migration's source, which did not",
                               hint="this image is restored only by the `ckpt receive` its source migrated it to")
        fd = r.inj.receive(ours, f"file {entry.id}")
    elif entry.inet.HasField("tcp"):
        fd = tcp.restore(r.inj, r.s, entry, r.warnings)
    else:
        fd = _create_inet(r.inj, r.s, entry, r.warnings)
    return set_status_flags(r, fd, entry)


def _create_inet(inj: Injector, s: Scratch, entry: files_pb2.FileEntry, notes: list[str]) -> int:
    """Create the inet socket of ``entry`` in the process of ``inj``; its (temporary) fd."""
    if entry.kind == K.INET:
        i = entry.inet
        fd = inj.call(NR.socket, i.family, i.type | socket.SOCK_CLOEXEC, i.protocol, name="socket")
        try:
            setopts(inj, s, fd, i.options)
            if i.tcp_closed:  # --tcp-close: a connection its peer reset
                with borrowed(inj.pid, fd) as sk:
                    if (why := tcp_states.reset_closed(sk, i.family)) is not None:
                        notes.append(f"file {entry.id}: a connection given up by --tcp-close comes back "
                                     f"never connected (reads give ENOTCONN), not reset: {why}")
                return fd
            if i.state == TCP_CLOSE and i.type == socket.SOCK_STREAM and not i.src_addr:
                return fd  # never bound: a new socket (a bound one is bound below)
            if i.src_addr:
                s.write(0, bytes(i.src_addr))
                try:
                    inj.call(NR.bind, fd, s.addr, len(i.src_addr), name="bind")
                except OSError as exc:
                    raise RestoreError(f"cannot bind the socket of file {entry.id} again: {exc.strerror}",
                                       hint="the address must be free (is the dumped process still running?)") from exc
            if i.type == socket.SOCK_STREAM and i.state == TCP_LISTEN:
                inj.call(NR.listen, fd, backlog_of(i), name="listen")
            elif i.type in _DATAGRAM and i.dst_addr:
                s.write(0, bytes(i.dst_addr))
                inj.call(NR.connect, fd, s.addr, len(i.dst_addr), name="connect")
            mcast.restore(inj, s, fd, i)
            if i.type in _DATAGRAM and i.shutdown:
                _shutdown(inj, fd, i.shutdown)
        except BaseException:
            inj.close(fd)
            raise
        return fd
    raise RestoreError(f"file {entry.id} is not a socket kind ckpt restores ({K.Name(entry.kind)})")


def _shutdown(inj: Injector, fd: int, bits: int) -> None:
    """``shutdown(fd, how)`` for RCV_SHUTDOWN 1 / SEND_SHUTDOWN 2 bits (how = bits - 1).  An unconnected
    datagram socket takes the bits and answers ENOTCONN (inet_shutdown): that is no failure here."""
    try:
        inj.call(NR.shutdown, fd, bits - 1, name=f"shutdown({fd}, {bits - 1})")
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


#: Every socket is claimed as inet; :func:`dump` makes a unix one UNIX (:data:`ckpt.resources.unix.KIND`).
KIND = FdKind(K.INET, lambda o: o.link.startswith("socket:["), dump, restore)
