"""Established TCP connections (IPv4/IPv6) kept alive across dump and restore with TCP_REPAIR (``--tcp-established``).

Dump, the target frozen, for each established connection:

1. lock it (:mod:`ckpt.resources.netlock`): the peer's packets are dropped
   from now on, so the kernel neither ACKs data the image would not hold nor,
   once the socket is gone, answers the peer with a RST;
2. take a duplicate of the socket (``pidfd_getfd``) and put it in repair mode
   (it is one socket: the target's descriptor is in repair mode too);
3. read what the connection is: the sequence number after each queue
   (TCP_QUEUE_SEQ), the queues themselves (``MSG_PEEK``; the send queue split
   into sent-but-unacknowledged and never-sent by SIOCOUTQ / SIOCOUTQNSD), the
   window (TCP_REPAIR_WINDOW), what the handshake negotiated (MSS clamp,
   window scales, SACK, timestamps: TCP_INFO) and the timestamp clock
   (TCP_TIMESTAMP), plus the options every socket keeps;
4. leave repair mode at once (SO_REUSEADDR set back: leaving clears it), the
   duplicate kept: the lock alone holds the peer off, and a ckpt killed from
   here on leaves the program a working socket.  (Its own timers may still
   send what the image holds as never sent: the restore sends those bytes
   again, at the same sequence numbers, and the peer takes them once.)

Then :class:`Session` decides.  The dump failed, or the target runs on
(``-R``, ``-s``, a migration that kept the source): lock removed — the
connection carries on as if nothing happened, its peer at most retransmits.
The dump ends the target: its lock is made to outlive ckpt
(:meth:`Session.persist`), the target is killed while our duplicate keeps
the socket open, and the duplicate, back in repair mode, is closed: the
socket goes without a FIN or RST.  The lock stays, and the image records its
tag for the restore.  A socket found in repair mode (a ckpt killed while it
read it) is taken out of it, with a note.

Restore, in the files step (before credentials are dropped): ``socket()`` is
injected into the helper, the restorer takes a duplicate and does the rest
itself — repair mode (which also lets the socket bind the port a restored
listener holds: SK_FORCE_REUSE), the options, each queue's starting sequence
number, ``bind`` to the old local address, ``connect`` (no SYN in repair
mode), the negotiated options and timestamp, the receive queue and the sent
part of the send queue written back in repair mode, the window, repair off,
SO_REUSEADDR, then the never-sent part written normally.  The lock goes once
the restore's self-check has read the connection's queues and the processes
run (:func:`unlock_restored`, as CRIU unlocks the network last): until then no
packet of the peer changes what the check compares with the dump.  A restore
that fails once every socket is made (the check refused it) removes it too:
killing its processes closes the sockets, which ends the connections.

Not kept: out-of-order segments (not acknowledged, or SACKed and reneged:
the peer sends them again), urgent data, ECN, the congestion state
(congestion control starts afresh).  A connection one side began to close
(FIN_WAIT1 … LAST_ACK, a SHUT_RD) is kept too: :mod:`ckpt.resources.tcp_states`
says how; a handshake under way (SYN_SENT, SYN_RECV) is refused.  A send queue bigger than the new socket's buffer makes
restore fix SO_SNDBUF at the size the dumped socket had (a note says so).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import signal
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from ..control.inject import Injector, Scratch
from ..errors import CkptError, RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel import tcp_repair as tr
from ..kernel.arch_x86_64 import NR
from ..kernel.fileio import close_all_but
from ..kernel.pidfd import dup_from
from ..kernel.sockopts import SO_ATTACH_FILTER, SO_BUF_LOCK, attach_filter
from ..procfs.timens import read_boot_id
from ..testpoint import point
from . import netlock, tcp_states

__all__ = ["TCP_STATES", "Session", "endpoint", "describe", "netns_id", "restore", "unlock_restored"]

#: include/net/tcp_states.h, for messages.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
_ESTABLISHED = 1
#: Options set after repair mode is left (leaving it resets SO_REUSEADDR); the others go before bind.
_AFTER_REPAIR = {(socket.SOL_SOCKET, socket.SO_REUSEADDR)}
_NO_SPACE = (errno.EAGAIN, errno.ENOMEM)


def _addr(family: int, raw: bytes) -> tuple:
    """A struct sockaddr_in/in6 (as the image keeps it) as Python's address tuple."""
    port = struct.unpack_from(">H", raw, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    flowinfo = struct.unpack_from(">I", raw, 4)[0]
    scope = struct.unpack_from("<I", raw, 24)[0] if len(raw) >= 28 else 0
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope


def _at(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint(family: int, raw: bytes) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a struct sockaddr, for messages."""
    return _at(_addr(family, raw))


def describe(family: int, local: bytes, peer: bytes) -> str:
    """"local -> peer" of a connection, for messages."""
    try:
        return f"{_at(_addr(family, local))} -> {_at(_addr(family, peer))}"
    except (ValueError, struct.error, OSError):
        return "(addresses unknown)"


def netns_id(pid: int) -> str:
    """"<boot_id>:<inode>" of the network namespace of ``pid``: unique on this host since its boot."""
    return f"{read_boot_id()}:{os.stat(f'/proc/{pid}/ns/net').st_ino}"


def _dup(pid: int, fd: int) -> socket.socket:
    return socket.socket(fileno=dup_from(pid, fd))


# --- dump ----------------------------------------------------------------------

class _Janitor:
    """A forked child that takes the connections out of repair mode if ckpt dies while it reads them.

    A socket in repair mode sends nothing and its program's writes only fill
    its queue: ckpt killed (SIGKILL, OOM) between putting a connection in
    repair mode and taking it out would hand the thawed program a dead
    connection.  The janitor is handed a duplicate of each socket before
    repair mode is set (SCM_RIGHTS over a socketpair), and forgets it once it
    is left; when its end of the pair reads EOF without a goodbye, ckpt is
    gone and it takes what it still holds out of repair mode, as
    :func:`_leave_repair` would, then exits.  It keeps no other descriptor of
    ckpt's (an nft lock owned by ckpt's netlink socket must go with ckpt) and
    ignores the signals a terminal or a service stop sends the whole group.
    """

    _WATCH, _FORGET, _BYE = b"W", b"F", b"Q"
    _ITEM = struct.Struct("=ii")  # (key, SO_REUSEADDR to put back)

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            _janitor(theirs.fileno())
        theirs.close()
        self.sock = ours

    def watch(self, key: int, sock: socket.socket, reuseaddr: int) -> None:
        socket.send_fds(self.sock, [self._WATCH + self._ITEM.pack(key, reuseaddr)], [sock.fileno()])

    def forget(self, key: int) -> None:
        self.sock.send(self._FORGET + self._ITEM.pack(key, 0))

    def close(self) -> None:
        """Goodbye: the janitor exits holding nothing (reaped here)."""
        try:
            self.sock.send(self._BYE)
        except OSError:
            pass
        self.sock.close()
        os.waitpid(self.pid, 0)


def _janitor(fd: int) -> None:
    """The janitor's life (:class:`_Janitor`); never returns."""
    try:
        close_all_but(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        conn = socket.socket(fileno=fd)
        held: dict[int, tuple[socket.socket, int]] = {}
        while True:
            msg, fds, _, _ = socket.recv_fds(conn, 64, 1)
            if msg[:1] == _Janitor._WATCH and fds:
                key, reuse = _Janitor._ITEM.unpack(msg[1:])
                held[key] = (socket.socket(fileno=fds[0]), reuse)
            elif msg[:1] == _Janitor._FORGET:
                key, _ = _Janitor._ITEM.unpack(msg[1:])
                s, _ = held.pop(key, (None, 0))
                if s is not None:
                    s.close()
            elif msg[:1] == _Janitor._BYE:
                break
            elif not msg:  # ckpt is gone without a goodbye
                for s, reuse in held.values():
                    try:
                        tr.select_queue(s, tr.TCP_NO_QUEUE)
                        tr.set_repair(s, tr.TCP_REPAIR_OFF_NO_WP)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                    except OSError:
                        pass
                break
    finally:
        os._exit(0)


@dataclass
class _Held:
    """One connection a dump locked: its lock tag, and our duplicate once taken."""

    pid: int
    fd: int
    tag: str
    netns: int | None = None  # the target's network namespace (an open descriptor) when it is not ours
    sock: socket.socket | None = None
    repairing: bool = False
    reuseaddr: int = 0


@dataclass
class Session:
    """The established connections one dump locks and puts in repair mode, and what becomes of them.

    A context manager around the frozen part of a dump: on leaving it, every
    connection is put back as it was (repair off, unlocked) unless
    :meth:`keep` said the targets are gone.  Call :meth:`resume` before
    letting a target run (-R): a program must never see its socket in repair
    mode, and :meth:`persist` before ending the targets of a dump, so that
    their locks outlive this process (until then they die with it: see
    :mod:`ckpt.resources.netlock`).  ``enabled`` False (no
    ``--tcp-established``): it holds nothing.  ``notes``: what the lock has
    to say (stale locks of killed runs removed, an old kernel).
    """

    enabled: bool = False
    notes: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    held: list[_Held] = field(default_factory=list)
    kept: bool = False
    #: Network namespaces of targets that are not in ours, (st_dev, st_ino) → open descriptor.
    _netns: dict[tuple[int, int], int] = field(default_factory=dict)
    #: The locks we hold, per network namespace (its descriptor; None: ours).
    _holders: dict[int | None, netlock.Holder] = field(default_factory=dict)
    #: Takes the connections out of repair mode if we die while reading them (made at the first).
    _janitor: _Janitor | None = None

    def __post_init__(self) -> None:
        if self.enabled:
            netlock.require()  # refuse before anything is frozen

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.kept:
            return
        problems = self._resume()
        if problems and exc is not None:
            exc.add_note("connections not put back: " + "; ".join(problems))
        elif problems:
            raise CkptError("could not put a dumped TCP connection back: " + "; ".join(problems),
                            hint="the process runs on; check `nft list ruleset`")

    def dump(self, pid: int, fd: int, family: int, local: bytes, peer: bytes, inet: files_pb2.InetSocket) -> None:
        """Lock the connection at ``fd`` of ``pid`` (in state ``inet.state``), read it in repair mode into
        ``inet.tcp``, keep a duplicate."""
        where = f"process {pid}: fd {fd} ({describe(family, local, peer)})"
        h = _Held(pid, fd, netlock.tag(self.token, pid, fd), self._netns_of(pid))
        lk = netlock.Lock.of(family, _addr(family, local)[:2], _addr(family, peer)[:2], h.tag)
        holder = self._holders.setdefault(h.netns, netlock.Holder(h.netns, self.notes))
        try:
            holder.lock([lk])
        except netlock.NetlockError as exc:
            raise Unsupported(f"{where}: cannot lock the connection: {exc}",
                              hint="--tcp-established needs nftables in the kernel and CAP_NET_ADMIN") from exc
        self.held.append(h)
        point("netlock.locked")
        h.sock = _dup(pid, fd)
        s = h.sock
        if s.getsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR):
            self.notes.append(f"{where}: the socket was in repair mode, as a ckpt run killed while reading it "
                              "leaves it: taken out of it")
        h.reuseaddr = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        if self._janitor is None:
            self._janitor = _Janitor()
        key = len(self.held)
        self._janitor.watch(key, s, h.reuseaddr)  # before repair mode: from here our death is covered
        tr.set_repair(s, tr.TCP_REPAIR_ON)
        h.repairing = True
        point("tcp.repairing")
        inet.tcp.CopyFrom(_read(s, where, inet.state))
        inet.tcp.lock = h.tag
        inet.tcp.netns = netns_id(pid)
        _leave_repair(h)  # read: the socket is the program's again, the lock alone keeps the peer out
        self._janitor.forget(key)

    def resume(self) -> None:
        """Every connection back as it was (repair off, unlocked): the targets are about to run."""
        problems = self._resume()
        if problems:
            raise CkptError("could not put a dumped TCP connection back: " + "; ".join(problems),
                            hint="check `nft list ruleset`")

    def persist(self) -> None:
        """The targets are about to be ended for a restore: their locks must outlive this process (and stay)."""
        for holder in self._holders.values():
            holder.persist()
        if self._holders:
            point("netlock.persisted")

    def keep(self, *, unlock: bool = False) -> list[str]:
        """The targets are dead: drop our duplicates (closed in repair mode: nothing reaches the peers).

        The lock stays for the restore (:meth:`persist`, if not done yet),
        unless ``unlock`` (a migration: the destination has the connection
        now, and its own host's lock).  Returns notes on what could not be
        done (the dump itself succeeded).
        """
        problems = []
        for h in self.held:
            if h.sock is not None:
                try:
                    tr.set_repair(h.sock, tr.TCP_REPAIR_ON)  # so that closing the last descriptor sends nothing
                except OSError as exc:
                    problems.append(f"process {h.pid}: fd {h.fd}: its connection was closed outside repair mode "
                                    f"({exc.strerror}): the peer may have seen it end")
                h.sock.close()
                h.sock = None
        self.kept = True
        if not unlock:
            try:
                self.persist()
            except CkptError as exc:
                problems.append(f"the network lock of the dumped connections is gone: {exc}")
        left = self._unlock()  # persisted locks are no longer ours: this lets go of the rest
        problems += [f"the network lock of the migrated connections stays here: {p}" for p in left]
        self.held = []
        self._close_netns()
        self._dismiss_janitor()
        return problems

    def _netns_of(self, pid: int) -> int | None:
        """A descriptor of ``pid``'s network namespace, or None when it is ours (where our sockets are)."""
        st, mine = os.stat(f"/proc/{pid}/ns/net"), os.stat("/proc/self/ns/net")
        key = (st.st_dev, st.st_ino)
        if key == (mine.st_dev, mine.st_ino):
            return None
        if key not in self._netns:
            self._netns[key] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return self._netns[key]

    def _unlock(self) -> list[str]:
        """Drop every lock we still hold, in each network namespace."""
        problems = []
        for holder in self._holders.values():
            try:
                holder.release()
            except CkptError as exc:
                problems.append(str(exc))
        self._holders.clear()
        return problems

    def _close_netns(self) -> None:
        for nsfd in self._netns.values():
            os.close(nsfd)
        self._netns.clear()

    def _resume(self) -> list[str]:
        problems = []
        for h in self.held:
            s = h.sock
            if s is None:
                continue
            try:
                if h.repairing:
                    _leave_repair(h)
            except OSError as exc:
                problems.append(f"process {h.pid}: fd {h.fd}: leaving repair mode: {exc}")
            finally:
                s.close()
                h.sock = None
        problems += self._unlock()
        self.held = []
        self._close_netns()
        self._dismiss_janitor()
        return problems

    def _dismiss_janitor(self) -> None:
        if self._janitor is not None:
            self._janitor.close()
            self._janitor = None


def _leave_repair(h: _Held) -> None:
    """Out of repair mode, sending nothing (no window probe), with the SO_REUSEADDR it had."""
    assert h.sock is not None
    tr.select_queue(h.sock, tr.TCP_NO_QUEUE)
    tr.set_repair(h.sock, tr.TCP_REPAIR_OFF_NO_WP)
    h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, h.reuseaddr)
    h.repairing = False


def _read(s: socket.socket, where: str, state: int = _ESTABLISHED) -> files_pb2.TcpRepair:
    """The state of the connection ``s`` (repair mode, peer locked out): seqs, queues, window, options.

    ``state``: the one seen before the lock.  Our FIN, not yet acknowledged, counts in SIOCOUTQ (and, not
    yet sent, in SIOCOUTQNSD) but is no byte of the queue (:mod:`ckpt.resources.tcp_states`)."""
    info = tr.info_options(s)
    if info.state != state:
        raise Unsupported(f"{where}: the connection became {TCP_STATES.get(info.state, info.state)} while it was "
                          "being dumped", hint="dump again, or use --tcp-close")
    f = tcp_states.fins(state)
    for _attempt in range(3):  # packets processed before the lock may still land: read until two reads agree
        inq, outq, notsent = tr.inq(s), tr.outq(s), tr.outq_notsent(s)
        fin_queued = f.ours and notsent > 0
        outq, notsent = outq - (f.ours and not f.ours_acked), notsent - fin_queued  # data bytes only
        tr.select_queue(s, tr.TCP_RECV_QUEUE)
        rcv_seq = tr.queue_seq(s)
        rq, rn = tr.peek(s, inq + 1) if inq else (b"", 0)
        tr.select_queue(s, tr.TCP_SEND_QUEUE)
        snd_seq = tr.queue_seq(s)
        sq, sn = tr.peek(s, outq + 1) if outq else (b"", 0)
        tr.select_queue(s, tr.TCP_NO_QUEUE)
        again = (tr.inq(s), tr.outq(s) - (f.ours and not f.ours_acked), tr.outq_notsent(s) - fin_queued)
        if rn == len(rq) == inq and sn == len(sq) == outq and again == (inq, outq, notsent):
            break
    else:
        raise CkptError(f"{where}: the connection's queues kept changing while it was locked "
                        f"(receive {inq} → {rn} bytes, send {outq} → {sn})", hint="dump again")
    w = tr.window(s)
    t = files_pb2.TcpRepair(snd_seq=snd_seq, rcv_seq=rcv_seq, send_queue=sq, recv_queue=rq, mss=tr.maxseg(s),
                            options=info.options, snd_wnd=w.snd_wnd, rcv_wnd=w.rcv_wnd, snd_wl1=w.snd_wl1,
                            max_window=w.max_window, rcv_wup=w.rcv_wup, unsent=notsent,
                            sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                            rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if info.options & tr.TCPI_OPT_WSCALE:
        t.snd_wscale, t.rcv_wscale = info.snd_wscale, info.rcv_wscale
    if info.options & tr.TCPI_OPT_TIMESTAMPS:
        t.timestamp = tr.timestamp(s)
    why = tcp_states.refusal(state, fin_queued)
    if why is not None:
        raise Unsupported(f"{where}: a connection in state {TCP_STATES.get(state, state)}: {why}",
                          hint="use --tcp-close to restore it closed")
    t.fin_queued = fin_queued
    t.shut_rd = tcp_states.rdhup(s) and not f.peers
    return t


# --- restore -------------------------------------------------------------------

def _repair_options(t: files_pb2.TcpRepair) -> list[tuple[int, int]]:
    opts = [(tr.TCPOPT_MAXSEG, t.mss)]
    if t.options & tr.TCPI_OPT_WSCALE:
        opts.append((tr.TCPOPT_WINDOW, t.snd_wscale | t.rcv_wscale << 16))
    if t.options & tr.TCPI_OPT_SACK:
        opts.append((tr.TCPOPT_SACK_PERM, 0))
    if t.options & tr.TCPI_OPT_TIMESTAMPS:
        opts.append((tr.TCPOPT_TIMESTAMP, 0))
    return opts


@dataclass
class _Writer:
    """Writes a queue back; if the fresh socket's buffer is too small, it grows it (the dumped size first)."""

    sock: socket.socket
    t: files_pb2.TcpRepair
    what: str
    notes: list[str]
    forced: set[int] = field(default_factory=set)

    def write(self, data: bytes, queue: str) -> None:
        view, off = memoryview(data), 0
        while off < len(view):
            try:
                off += self.sock.send(view[off:], socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno not in _NO_SPACE or not self._grow(queue, len(view) - off):
                    raise
        view.release()

    def _grow(self, queue: str, left: int) -> bool:
        """The size the dumped socket had first; then room for twice what is left (skb overhead); then give up."""
        opt, recorded, name = ((tr.SO_RCVBUFFORCE, self.t.rcvbuf, "SO_RCVBUF") if queue == "receive"
                               else (tr.SO_SNDBUFFORCE, self.t.sndbuf, "SO_SNDBUF"))
        now = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF if queue == "receive" else socket.SO_SNDBUF)
        size = next((n for n in (recorded, now + 2 * left) if n > now), None)
        if size is None or len(self.forced) >= 4:
            return False
        self.forced.add(size)
        self.sock.setsockopt(socket.SOL_SOCKET, opt, size // 2)  # the kernel doubles it
        self.notes[:] = [n for n in self.notes if not n.startswith(f"{self.what}: {name} fixed")]
        self.notes.append(f"{self.what}: {name} fixed at {size} bytes to hold its {queue} queue "
                          "(it no longer grows by itself)")
        return True

    def unfix(self, locks: int) -> None:
        """Give the buffers back to the kernel's tuning once the queues are in, as the dumped socket had them
        (``locks``: its SO_BUF_LOCK); a kernel without SO_BUF_LOCK (before 5.14) keeps them fixed, noted."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_BUF_LOCK, locks)
        except OSError:
            return
        self.notes[:] = [n for n in self.notes if not n.startswith(f"{self.what}: SO_") or " fixed at " not in n]


def restore(inj: Injector, s: Scratch, entry: files_pb2.FileEntry, notes: list[str]) -> int:
    """Re-create the established connection of ``entry`` in the process of ``inj``; its (temporary) fd there."""
    i, t = entry.inet, entry.inet.tcp
    local, peer = _addr(i.family, bytes(i.src_addr)), _addr(i.family, bytes(i.dst_addr))
    what = f"the TCP connection {_at(local)} -> {_at(peer)} (file {entry.id})"
    if t.netns and ipaddress.ip_address(local[0]).is_loopback and t.netns != netns_id(inj.pid):
        raise RestoreError(f"cannot restore {what}: it is a loopback connection, and this is not the network "
                           "namespace it was dumped in (its peer is not here)",
                           hint="restore it on the host (and network namespace) it was dumped on, "
                                "or dump with --tcp-close")
    fd = inj.call(NR.socket, i.family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, i.protocol, name="socket")
    try:
        with _dup(inj.pid, fd) as sk:
            _rebuild(sk, i, local, peer, what, notes)
    except BaseException:
        inj.close(fd)  # still in repair mode unless the error came after: then nothing was half-done
        raise
    return fd


def unlock_restored(entries: Iterable[files_pb2.FileEntry]) -> list[str]:
    """The connections of ``entries`` are back and checked: drop their locks; notes for what stays locked."""
    notes: list[str] = []
    for entry in entries:
        i = entry.inet
        if entry.kind == files_pb2.FileEntry.INET and i.HasField("tcp") and i.tcp.lock:
            local, peer = _addr(i.family, bytes(i.src_addr)), _addr(i.family, bytes(i.dst_addr))
            _unlock_restored(i.tcp, f"the TCP connection {_at(local)} -> {_at(peer)} (file {entry.id})", notes)
    return notes


def _unlock_restored(t: files_pb2.TcpRepair, what: str, notes: list[str]) -> None:
    """The connection is back: drop its lock, here (another host's is its own business: a migration's source)."""
    here = netns_id(os.getpid())
    if t.netns and t.netns != here and t.netns.split(":")[0] == here.split(":")[0]:
        notes.append(f"{what}: its network lock stays in the network namespace it was dumped in, which ckpt "
                     f"cannot reach from here: delete the rule with comment {t.lock!r} from table inet ckpt there")
        return
    try:
        notes.extend(netlock.unlock({t.lock}))
    except CkptError as exc:
        notes.append(f"{what}: its network lock could not be removed ({exc}); "
                     f"delete the rule with comment {t.lock!r} (`nft -a list table inet ckpt`)")


def _before(seq: int, limit: int) -> int:
    """``seq``, or ``limit`` if ``seq`` comes after it (u32 sequence space)."""
    return limit if 0 < (seq - limit) & 0xFFFFFFFF < 1 << 31 else seq


def _bind_address(sk: socket.socket, family: int, local: tuple, peer: tuple) -> tuple:
    """Where to bind ``sk`` so that it comes back bound as the dumped socket was: ``local``, or the unspecified
    address on its port when ``connect`` had bound it.

    ``bind`` to an IPv6 address sets IPV6_V6ONLY (``__inet6_bind``); a socket that ``connect`` bound, or one
    accepted from a listener on ``::``, keeps the value it had (0 by default), and so must the restored one.
    Bound to ``::`` on the port (repair mode shares it with a listener), it takes the source address the route
    gives at ``connect`` — used when that is the dumped one.
    """
    if family != socket.AF_INET6 or sk.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
        return local
    host = ipaddress.ip_address(local[0].split("%", 1)[0])
    if host.is_unspecified or getattr(host, "ipv4_mapped", None):
        return local
    try:
        with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
            probe.connect(peer)  # no packet: it asks the route which source address it gives
            routed = probe.getsockname()[0]
    except OSError:
        return local
    return ("::", local[1], 0, local[3]) if routed == local[0] else local


def _rebuild(sk: socket.socket, i: files_pb2.InetSocket, local: tuple, peer: tuple, what: str,
             notes: list[str]) -> None:
    t = i.tcp
    f = tcp_states.fins(i.state or _ESTABLISHED)
    tr.set_repair(sk, tr.TCP_REPAIR_ON)
    for o in i.options:
        if (o.level, o.name) == (socket.SOL_SOCKET, SO_ATTACH_FILTER):
            attach_filter(sk, bytes(o.value))
        elif (o.level, o.name) not in _AFTER_REPAIR:
            sk.setsockopt(o.level, o.name, bytes(o.value))
    sent = len(t.send_queue) - t.unsent
    rcv_end, snd_end = (t.rcv_seq - f.peers) & 0xFFFFFFFF, (t.snd_seq - f.ours) & 0xFFFFFFFF  # data only: no FIN
    tr.select_queue(sk, tr.TCP_RECV_QUEUE)
    tr.set_queue_seq(sk, rcv_end - len(t.recv_queue))
    tr.select_queue(sk, tr.TCP_SEND_QUEUE)
    tr.set_queue_seq(sk, snd_end - len(t.send_queue))
    try:
        sk.bind(_bind_address(sk, i.family, local, peer))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise RestoreError(f"cannot restore {what}: its local address {local[0]} does not exist on this host",
                               hint="an established connection keeps its addresses: restore it where that "
                                    "address is configured (move the address with the process), "
                                    "or dump with --tcp-close") from exc
        raise RestoreError(f"cannot restore {what}: bind: {exc.strerror}",
                           hint="is another socket on that address and port (the dumped process still "
                                "running?)") from exc
    try:
        sk.connect(peer)  # repair mode: no SYN, straight to ESTABLISHED
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:  # the 4-tuple is in the established hash already
            raise RestoreError(f"cannot restore {what}: another socket holds that connection",
                               hint="is the dumped process still running?") from exc
        raise RestoreError(f"cannot restore {what}: connect in repair mode: {exc.strerror}") from exc
    tr.set_options(sk, _repair_options(t))
    if t.options & tr.TCPI_OPT_TIMESTAMPS:
        tr.set_timestamp(sk, t.timestamp)
    w = _Writer(sk, t, what, notes)
    if t.recv_queue:
        tr.select_queue(sk, tr.TCP_RECV_QUEUE)
        w.write(bytes(t.recv_queue), "receive")
    if sent:
        tr.select_queue(sk, tr.TCP_SEND_QUEUE)  # taken as sent: only the peer's ACK removes it
        w.write(bytes(t.send_queue[:sent]), "send")
    # the peer's FIN is not in yet: the window's marks may not pass it (the kernel checks them)
    tr.set_window(sk, tr.tcp_repair_window(_before(t.snd_wl1, rcv_end), t.snd_wnd, t.max_window, t.rcv_wnd,
                                           _before(t.rcv_wup, rcv_end)))
    tr.select_queue(sk, tr.TCP_NO_QUEUE)
    _close_as_dumped(sk, i, f, local, peer, rcv_end, (snd_end - len(t.send_queue)) & 0xFFFFFFFF, what)
    tr.set_repair(sk, tr.TCP_REPAIR_OFF)
    try:
        for o in i.options:
            if (o.level, o.name) in _AFTER_REPAIR:
                sk.setsockopt(o.level, o.name, bytes(o.value))
        if t.unsent:
            w.write(bytes(t.send_queue[sent:]), "send")  # never sent: goes out like any write
        tcp_states.shut_after(sk, t.fin_queued and f.ours, t.shut_rd)
        if w.forced:
            w.unfix(next((int.from_bytes(o.value, "little") for o in i.options
                          if (o.level, o.name) == (socket.SOL_SOCKET, SO_BUF_LOCK)), 0))
    except BaseException:
        tr.set_repair(sk, tr.TCP_REPAIR_ON)  # so that closing it sends nothing to the peer
        raise


def _close_as_dumped(sk: socket.socket, i: files_pb2.InetSocket, f: tcp_states.Fins, local: tuple, peer: tuple,
                     rcv_end: int, snd_una: int, what: str) -> None:
    """The restored ESTABLISHED socket (repair mode) taken to the closing state it was dumped in: our FIN
    counted sent, the peer's FIN or ACK of ours made up, in the order the state had them
    (:mod:`ckpt.resources.tcp_states`).  A FIN still queued behind unsent data waits for :func:`shut_after`."""
    t, ts = i.tcp, tcp_states
    fin_sent = f.ours and not t.fin_queued
    window = t.snd_wnd >> (t.snd_wscale if t.options & tr.TCPI_OPT_WSCALE else 0)

    def peer_says(fin: bool, ack: int, want: int) -> None:
        ts.peer_segment(sk, i.family, local, peer, fin=fin, ack=ack, seq=rcv_end, window=window, want=want,
                        what=what)

    if i.state == ts.LAST_ACK:  # the peer's FIN came first
        peer_says(True, snd_una, ts.CLOSE_WAIT)
        if fin_sent:
            ts.shut_in_repair(sk)
        return
    if fin_sent:
        ts.shut_in_repair(sk)
    if f.peers:
        peer_says(True, snd_una, ts.CLOSING if fin_sent else ts.CLOSE_WAIT)
    elif f.ours_acked:
        peer_says(False, t.snd_seq, ts.FIN_WAIT2)
