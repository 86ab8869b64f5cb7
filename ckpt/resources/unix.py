"""Unix domain sockets: listeners with their accept queues, connected sockets with their peers and queued data.

Dump
----
:mod:`ckpt.resources.sockets` records what each socket says about itself
(type, getsockname, getpeername, options, a listener's backlog);
:func:`dump_tree` then sees every unix socket of the tree at once and links
them through sock_diag (:func:`ckpt.kernel.sock_diag.unix_sockets`):
``UNIX_DIAG_PEER`` is the peer's inode, a listener's ``UNIX_DIAG_ICONS`` the
client of each connection waiting in its accept queue.

* A connected socket (socketpair, connect/accept; stream, datagram,
  seqpacket) whose peer is a socket of the tree — in the same process or in
  another — is kept with its peer.  A peer the kernel reports with no inode
  was closed: the socket comes back connected to a closed peer, as it was.
* A peer outside the tree is refused, naming the process, fd, type and the
  peer (its inode and the process holding it), unless ``ext_unix_close``:
  then it comes back connected to a closed peer (stream/seqpacket: EOF after
  the queued data, EPIPE on write; datagram: ECONNREFUSED), with a note.
* A listener keeps its accept queue when the client of every waiting
  connection is in the tree and has sent nothing yet: such data sits in a
  server-side socket the kernel creates at connect() and that nobody can read
  before accept().  Other waiting connections are refused, or dropped with
  ``ext_unix_close`` (a note).
* Queued data is read without disturbing it: ``MSG_PEEK`` at ``SO_PEEK_OFF``
  walks the receive queue, one message per peek for datagram/seqpacket (their
  boundaries are kept), and the socket's own peek offset is put back
  (docs/kernel-notes.md has what was measured).  Refused: urgent data
  (MSG_OOB), and zero-length messages an offset peek cannot see
  (:func:`_hidden_messages`).
* A bound path's file: this socket's keeps its mode and owner; one deleted
  since (``unlink``) is bound again at the restore and deleted again, so the
  socket keeps its name and the path stays free; a path that now names
  another file or socket, or whose directory is gone, is refused (the restore
  could not bind there).
* Descriptors in flight (SCM_RIGHTS, sent and not received yet): a peek
  gives ckpt a duplicate of each.  :func:`peek_descriptors` collects them
  before the files are classified, so the registry dumps each open file once
  whoever holds it — a process of the tree, or only the queue — and
  :func:`dump_tree` records, per queued message, the FileEntry ids it carries
  (``UnixSocket.in_flight``).  A stream peek runs on to the end of the first
  message that carries descriptors (whatever its length: measured), so it
  cannot tell where that message starts; a read can (its descriptors come
  with the first read that touches it).  A stream whose peer is a socket of
  the tree is therefore read and sent back (:func:`_split_stream`), one byte
  per read up to each such message, so the restore sends the same byte ranges
  with them; else the bytes before such a message are kept with it (a note).
* Names: a listener's and a bound socket's own.  accept() gives the server
  side the listener's name: with that listener in the tree the connection is
  re-made by connect() + accept(), so getsockname/getpeername answer as
  before; otherwise the server side comes back unnamed (a note).

Restore
-------
Sockets linked by a connection or an accept queue are one *group*
(:func:`groups`), created together by :class:`UnixRestorer` inside the first
process that needs one of them: listeners (``bind``, ``listen``), accepted
connections (``connect`` + ``accept4``), waiting connections (``connect``),
socketpairs (``socketpair``, then ``bind`` of ends with their own name),
datagram sockets connected by name.  A socket whose peer is gone gets a
stand-in peer from ``socketpair`` that is closed once the queue is filled.
The queued data is written from the restorer through ``pidfd_getfd``
duplicates of the senders, each message with the descriptors it carried
(``SCM_RIGHTS`` of the restorer's duplicates, from a ``carried`` callback of
the files registry), then ``shutdown`` and the status flags are applied.  Members other processes use are handed over through
``files.SharedFiles``, like pipe ends.

Refused: messages queued on a socket with SO_PASSCRED or SO_PASSPIDFD (their
senders' credentials would come back as the restorer's).  Not kept: the
sender credentials of queued messages a socket without them may ask for
later, and SO_PEERCRED (the helper that re-made the
connection, with the restorer's credentials at that point), the sender
address of datagrams queued on an unconnected socket (refused unless
``--tolerate datagram-senders``) — but for a sender of the tree bound to that
name and connected to the receiver, which sends them again — socket
filters, a pending ECONNRESET of a socket whose peer closed with unread data.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from ..control.inject import Injector, Scratch
from ..errors import CkptError, RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import dup_from, pidfd_getfd, pidfd_open
from ..kernel.sock_diag import TCP_LISTEN, UnixDiag, unix_sockets
from ..procfs.holders import holders
from ..tolerance import lose
from .fdkind import FdDump, FdKind, Opener
from .sockets import TCP_CLOSE, TCP_ESTABLISHED, backlog_of, borrowed, set_status_flags, setopts

__all__ = ["FEATURE", "TYPE_NAMES", "KIND", "dump_tree", "peek_descriptors", "groups", "UnixRestorer", "show_name"]

FileEntry = files_pb2.FileEntry
K = FileEntry.Kind

#: What a message names the socket types by.
TYPE_NAMES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram", socket.SOCK_SEQPACKET: "seqpacket"}
SO_PASSCRED, SO_SNDBUFFORCE, SO_RCVBUFFORCE, SO_PASSSEC, SO_PEEK_OFF, SO_PASSPIDFD = 16, 32, 33, 34, 42, 76
SCM_PIDFD = 4
RCV_SHUTDOWN, SEND_SHUTDOWN = 1, 2
_SHUT_HOW = {RCV_SHUTDOWN: socket.SHUT_RD, SEND_SHUTDOWN: socket.SHUT_WR, RCV_SHUTDOWN | SEND_SHUTDOWN: socket.SHUT_RDWR}
#: Room for SCM_MAX_FD descriptors, credentials and a pidfd: a peek never truncates its control data.
_CMSG_SPACE = socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4) + 64
_PEEK_BUF = 1 << 20
#: Most bytes read one at a time to find where a stream message with descriptors starts (_split_stream).
_MAX_BYTEWISE = 1 << 16
#: A queue longer than this is surely a loop, not data (a unix socket holds a few hundred KiB).
_MAX_PEEKS = 1 << 17
_SETFL_MASK = os.O_NONBLOCK | os.O_APPEND | 0o20000  # + O_ASYNC
_INT = struct.Struct("<i")
_AT_FDCWD = -100
#: SO_SNDBUFFORCE of a stand-in sender: room for any queue (the kernel caps it at INT_MAX / 2).
_STANDIN_SNDBUF = 1 << 29
#: Options set last, once the socket has its name (set earlier, they would make it autobind).
_FLAG_OPTIONS = (SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD)
_EXT_HINT = ("use --ext-unix-close (ext_unix_close=True) to restore it as a socket whose peer closed, "
             "or dump the peer's process with it (-t of a common ancestor)")

#: The image feature (:mod:`ckpt.image.compat`) of a socket whose path was deleted since bind.
FEATURE = "unix-unlinked-names"


def show_name(name: bytes) -> str:
    """A unix socket name as ``ss`` shows it: a path, or @ for an abstract name's leading NUL."""
    if not name:
        return "(unnamed)"
    return "@" + name[1:].decode(errors="backslashreplace") if name[0] == 0 else os.fsdecode(name.rstrip(b"\0"))


# --- dump ---------------------------------------------------------------------------------------

@dataclass
class _Sock:
    """One unix socket of the tree (an open file, at its first fd) and what sock_diag says of it."""

    entry: FileEntry
    pid: int
    fd: int
    diag: UnixDiag | None
    why_unseen: str = ""
    #: How messages name a socket that is itself in flight (held by ckpt's peek, not by a process).
    label: str = ""

    @property
    def u(self) -> files_pb2.UnixSocket:
        return self.entry.unix

    @property
    def kind(self) -> str:
        return TYPE_NAMES.get(self.u.type, str(self.u.type))

    def where(self) -> str:
        return self.label or f"process {self.pid}: fd {self.fd}"

    def refuse(self, what: str, hint: str | None = None) -> Unsupported:
        return Unsupported(f"{self.where()} is a unix {self.kind} socket {what}", hint=hint)


@dataclass(frozen=True)
class _Message:
    """One peek: the data, descriptors received with it (ours, to close), the sender's address."""

    data: bytes
    fds: tuple[int, ...]
    addr: bytes


def _lookup(pid: int, ino: int) -> tuple[UnixDiag | None, str]:
    try:
        found = unix_sockets(ino).get(ino)
    except OSError as exc:
        return None, f"sock_diag failed: {exc.strerror or exc}"
    if found is None:
        try:
            other_ns = os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        except OSError:
            other_ns = False
        return None, ("the process is in another network namespace, which sock_diag does not see" if other_ns
                      else "sock_diag does not report it")
    return found, ""


def _holders(inodes: set[int], skip: set[int], skip_fds: Collection[tuple[int, int]] = ()) -> dict[int, list[str]]:
    """For each socket inode, the processes outside ``skip`` holding it, as "process P (comm) fd N"."""
    found = holders({f"socket:[{ino}]" for ino in inodes}, skip=skip, skip_fds=skip_fds)
    return {ino: found[f"socket:[{ino}]"] for ino in inodes}


@dataclass
class _Outside:
    """What lies beyond the tree, asked for only when a socket points there."""

    pids: set[int]
    #: ckpt's own duplicates of sockets in flight: not holders outside.
    carried: Collection[tuple[int, int]] = ()
    _listeners: dict[int, UnixDiag] | None = None

    def listeners(self) -> dict[int, UnixDiag]:
        """Every unix listener of the network namespace (one sock_diag dump); empty if it cannot be asked."""
        if self._listeners is None:
            try:
                self._listeners = unix_sockets(states=1 << TCP_LISTEN)
            except OSError:
                self._listeners = {}
        return self._listeners

    def listener_waiting_for(self, client: int) -> UnixDiag | None:
        return next((d for d in self.listeners().values() if client in d.icons), None)

    def holder(self, ino: int) -> str:
        held = _holders({ino}, self.pids, self.carried)[ino]
        return f"held by {', '.join(held)}" if held else "held by no process (in flight, or being closed)"


def peek_descriptors(pid: int, fd: int) -> list[int] | None:
    """Duplicates (ckpt's, to close) of the descriptors in flight in the receive queue of ``pid``'s ``fd``;
    None if it is not a unix socket.  The queue and the socket's peek offset are left as they were."""
    with borrowed(pid, fd) as sock:
        if sock.family != socket.AF_UNIX:
            return None
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return []
        stype = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        ino = os.fstat(sock.fileno()).st_ino
        diag, _ = _lookup(pid, ino)
        if diag is None or (stype == socket.SOCK_STREAM and diag.peer is None):
            return []  # nothing to read (an unconnected stream socket even answers EINVAL); refused later if unseen
        s = _Sock(FileEntry(kind=K.UNIX), pid, fd, diag)
        s.u.type, s.u.shutdown = stype, diag.shutdown
        own_off = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        try:
            msgs = _peek_all(s, sock)
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, own_off)
    return [got for m in msgs for got in m.fds]


def dump_tree(socks: Sequence[tuple[FileEntry, int, int]], *, ext_unix_close: bool = False,
              notes: list[str] | None = None, carried: Callable[[int], int] | None = None,
              labels: Mapping[tuple[int, int], str] | None = None, tolerate: frozenset[str] = frozenset()) -> None:
    """Link the unix sockets of a frozen tree and record their accept and receive queues.

    ``socks``: (entry filled by :func:`ckpt.resources.sockets.dump`, pid, fd)
    of every unix socket open file of the tree.  Refuses (Unsupported) before
    anything is read; what is kept less than exactly goes to ``notes``, and what
    would be lost is refused unless ``tolerate`` names it (:mod:`ckpt.tolerance`).
    ``carried``: the FileEntry id of a descriptor a peek received (a duplicate
    of one in flight); without it, descriptors in flight are refused.
    ``labels``: how to name a (pid, fd) that is not a process's own — a
    socket in flight, held here by ckpt's peek.
    """
    if not socks:
        return
    notes = notes if notes is not None else []
    labels = labels or {}
    items = [_Sock(e, pid, fd, *_lookup(pid, e.unix.ino), label=labels.get((pid, fd), ""))
             for e, pid, fd in socks]
    by_ino = {s.u.ino: s for s in items}
    me = os.getpid()
    outside = _Outside({pid for _, pid, _ in socks if pid != me}, carried=labels)
    waiting: set[int] = set()  # clients of connections waiting in a listener of the tree
    for s in items:
        if s.u.state == TCP_LISTEN:
            _accept_queue(s, by_ino, outside, ext_unix_close, notes, tolerate)
            waiting.update(s.u.pending)
    for s in items:
        if s.u.state != TCP_LISTEN:
            _peer(s, by_ino, waiting, outside, ext_unix_close, notes)
    _inherited_names(items, by_ino, waiting, outside, notes)
    for s in items:
        _queue(s, by_ino, notes, carried, tolerate)
        _socket_file(s)


def _socket_file(s: _Sock) -> None:
    """The file a bound path names now: this socket's (its mode and owner are kept), none (the file was
    deleted since: the restore binds and deletes it again), or another file — refused, the restore could not
    bind there (sock_diag's VFS inode is the socket's own file, deleted or not)."""
    name = bytes(s.u.name)
    if not name or name[0] == 0 or s.u.name_inherited or s.diag is None or s.diag.vfs is None:
        return
    path = name if name.startswith(b"/") else os.path.join(os.fsencode(f"/proc/{s.pid}/cwd"), name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path) or b"."):
            raise s.refuse(f"bound to {show_name(name)}, whose directory was deleted since: the restore could not "
                           "bind it there") from None
        s.u.name_unlinked = True
        return
    except OSError:
        return
    if (st.st_dev, st.st_ino) == s.diag.vfs:
        s.u.file_mode, s.u.file_uid, s.u.file_gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        return
    other = "socket" if stat.S_ISSOCK(st.st_mode) else "file"
    raise s.refuse(f"bound to {show_name(name)}, whose file was deleted since and the path now names another "
                   f"{other} (inode {st.st_ino}): the restore could not bind it there",
                   hint="move that file away while the dump runs, or end the socket")


def _accept_queue(s: _Sock, by_ino: Mapping[int, _Sock], outside: _Outside, ext_unix_close: bool,
                  notes: list[str], tolerate: frozenset[str]) -> None:
    """A listener's waiting connections: their clients in the tree, in queue order."""
    if s.diag is None:
        lose("unix-diag", tolerate, s.where(), f"a unix listener whose connections waiting to be accepted are not "
             f"known ({s.why_unseen})", notes)
        return
    for client in s.diag.icons:
        c = by_ino.get(client) if client else None
        if c is not None:
            if c.diag is not None and c.diag.wqueue:
                raise c.refuse(f"connected to the listener at {s.where()} that has sent data the listener has not "
                               "accepted yet", "that data waits in a socket the kernel holds until accept(): "
                                               "dump once the server has accepted the connection")
            s.u.pending.append(client)
            continue
        who = "a client that has closed since" if not client else f"socket:[{client}], {outside.holder(client)}"
        if not ext_unix_close:
            raise s.refuse(f"listening on {show_name(s.u.name)} with a connection waiting to be accepted from {who}, "
                           "outside the dumped processes", _EXT_HINT)
        s.u.ext_closed = True
        notes.append(f"{s.where()}: a connection waiting on {show_name(s.u.name)} from {who} is dropped "
                     "(--ext-unix-close)")


def _peer(s: _Sock, by_ino: Mapping[int, _Sock], waiting: set[int], outside: _Outside, ext_unix_close: bool,
          notes: list[str]) -> None:
    """Connected or not, and to whom: a socket of the tree, a closed one, or one outside (refused or closed)."""
    if s.diag is None:
        raise s.refuse(f"whose peer ckpt cannot learn ({s.why_unseen})")
    s.u.shutdown = s.diag.shutdown
    peer = s.diag.peer
    if peer is None:
        s.u.state = TCP_CLOSE
        return
    s.u.state = TCP_ESTABLISHED
    if peer and peer in by_ino:
        s.u.peer_ino = peer
        return
    if not peer:
        if s.u.ino in waiting:
            return  # its connection waits in a listener of the tree: re-made by connect()
        listener = outside.listener_waiting_for(s.u.ino)
        if listener is None:
            return  # the peer was closed: restored connected to a closed peer
        what = (f"waiting to be accepted by the listener socket:[{listener.ino}] on {show_name(listener.name or b'')}, "
                f"{outside.holder(listener.ino)}")
    else:
        what = f"connected to socket:[{peer}], {outside.holder(peer)}"
    if not ext_unix_close:
        raise s.refuse(f"{what}, outside the dumped processes", _EXT_HINT)
    s.u.ext_closed = True
    notes.append(f"{s.where()}: unix {s.kind} socket {what}: restored with its peer closed (--ext-unix-close)")


def _inherited_names(items: Sequence[_Sock], by_ino: Mapping[int, _Sock], waiting: set[int], outside: _Outside,
                     notes: list[str]) -> None:
    """Which connected stream/seqpacket sockets have a name only because accept() gave them the listener's.

    Such a name cannot be bound again (the listener holds it, or held it: a
    path stays on disk).  The listener in the tree: the connection is re-made
    through it.  Else the socket that has the name of a listener outside, or
    the only named end of its connection, is taken for the accepted side and
    comes back unnamed (a note); two named ends and no listener: neither name
    can be told its own, so neither is bound.
    """
    listeners: dict[tuple[bytes, int], list[_Sock]] = {}
    for s in items:
        if s.u.state == TCP_LISTEN and s.u.name:
            listeners.setdefault((s.u.name, s.u.type), []).append(s)
    connected = [s for s in items if s.u.state == TCP_ESTABLISHED and s.u.type != socket.SOCK_DGRAM and s.u.name
                 and s.u.ino not in waiting]  # a client still waiting to be accepted has only its own name
    for s in connected:
        found = listeners.get((s.u.name, s.u.type), [])
        if len(found) == 1:
            s.u.name_inherited, s.u.listener_ino = True, found[0].u.ino
        elif any(d.name == s.u.name and d.type == s.u.type for d in outside.listeners().values()):
            s.u.name_inherited = True
    both_named: set[int] = set()
    for s in connected:
        peer = by_ino.get(s.u.peer_ino)
        if s.u.name_inherited or (peer is not None and peer.u.name_inherited):
            continue
        s.u.name_inherited = True
        if peer is None or not peer.u.name:
            continue
        peer.u.name_inherited = True
        both_named |= {s.u.ino, peer.u.ino}
        notes.append(f"{s.where()} and {peer.where()}: both ends of a unix {s.kind} connection are named "
                     f"({show_name(s.u.name)}, {show_name(peer.u.name)}) and no listener tells which name accept() "
                     "gave: neither is bound again")
    for s in connected:
        if s.u.name_inherited and not s.u.listener_ino and s.u.ino not in both_named:
            notes.append(f"{s.where()}: unix {s.kind} socket accepted on {show_name(s.u.name)}, whose listener is not "
                         "dumped: restored unnamed (getsockname here, getpeername at its peer give an empty name)")


def _close_fds(msgs: Sequence[_Message]) -> None:
    for m in msgs:
        for fd in m.fds:
            os.close(fd)


def _received(anc: list[tuple[int, int, bytes]]) -> tuple[tuple[int, ...], bool]:
    """(descriptors received, credentials present) from recvmsg's control data; pidfds are closed at once."""
    fds: list[int] = []
    creds = False
    for level, kind, data in anc:
        if level != socket.SOL_SOCKET:
            continue
        if kind in (socket.SCM_RIGHTS, SCM_PIDFD):
            got = array.array("i", data[:len(data) - len(data) % 4]).tolist()
            if kind == SCM_PIDFD:
                for fd in got:
                    os.close(fd)
            else:
                fds += got
        elif kind == socket.SCM_CREDENTIALS:
            creds = True
    return tuple(fds), creds


def _peek_all(s: _Sock, sock: socket.socket) -> list[_Message]:
    """Every message (or, for a stream, run of bytes) of the receive queue, peeked at increasing offsets.

    A seqpacket socket shut down for reading answers an empty read at the
    end of its queue, like a zero-length message: SO_PASSCRED is set for the
    walk so that every real message comes with credentials and the end does not.
    """
    stream = s.u.type == socket.SOCK_STREAM
    mark_eof = s.u.type == socket.SOCK_SEQPACKET and bool(s.u.shutdown & RCV_SHUTDOWN)
    passcred = sock.getsockopt(socket.SOL_SOCKET, SO_PASSCRED)
    msgs: list[_Message] = []
    off, size = 0, _PEEK_BUF
    try:
        if mark_eof and not passcred:
            sock.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        while len(msgs) < _MAX_PEEKS:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, off)
            try:
                data, anc, flags, addr = sock.recvmsg(size, _CMSG_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return msgs
            fds, creds = _received(anc)
            if flags & socket.MSG_CTRUNC:
                for fd in fds:
                    os.close(fd)
                raise CkptError(f"{s.where()}: control data of a queued message was truncated by a peek")
            if flags & socket.MSG_TRUNC and not stream:
                for fd in fds:
                    os.close(fd)
                size *= 4  # a bigger datagram: peek it again, whole
                continue
            if not data and not fds and (stream or (mark_eof and not creds)):
                return msgs  # end of a stream, or of a seqpacket queue, whose peer shut down
            msgs.append(_Message(data, fds, b"" if not addr else _addr_bytes(addr)))
            off += len(data)
        _close_fds(msgs)
        raise CkptError(f"{s.where()}: more than {_MAX_PEEKS} messages queued: not read")
    except BaseException:
        _close_fds(msgs)
        raise
    finally:
        if mark_eof and not passcred:
            sock.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 0)


def _addr_bytes(addr: object) -> bytes:
    return os.fsencode(addr) if isinstance(addr, str) else bytes(addr)  # type: ignore[arg-type]


def _head_hidden(sock: socket.socket, msgs: Sequence[_Message]) -> bool:
    """Does a plain peek (no offset) see a zero-length message at the head that the offset walk missed?"""
    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    try:
        data, anc, _, _ = sock.recvmsg(_PEEK_BUF, _CMSG_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    fds, _ = _received(anc)
    for fd in fds:
        os.close(fd)
    return not data and bool(msgs) and bool(msgs[0].data)


def _hidden_messages(stype: int, msgs: Sequence[_Message], sender: UnixDiag | None) -> bool:
    """Zero-length datagrams the offset walk did not see (measured: a zero-length message already peeked,
    by the program or by an earlier ``dump -R``, is skipped by every peek at an offset).

    A connected pair's queued messages are charged to the sender (its
    ``wqueue``, in truesize); sending the same messages through a fresh pair
    here costs the same, byte for byte (measured) — more at the sender means
    messages we did not see.
    """
    if sender is None or not sender.wqueue:
        return False
    a, b = socket.socketpair(socket.AF_UNIX, stype)
    try:
        try:
            a.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 30)
            for m in msgs:
                a.send(m.data, socket.MSG_DONTWAIT)
            ino = os.fstat(a.fileno()).st_ino
            replayed = unix_sockets(ino)[ino].wqueue
        except (OSError, KeyError):
            return False  # cannot tell: trust the walk
        return sender.wqueue > replayed
    finally:
        a.close()
        b.close()


def _queue(s: _Sock, by_ino: Mapping[int, _Sock], notes: list[str], carried: Callable[[int], int] | None,
           tolerate: frozenset[str]) -> None:
    """Record the receive queue (peeked, undisturbed), the descriptors in flight in it, and the options only
    the socket itself can tell."""
    with borrowed(s.pid, s.fd) as sock:
        own_off = sock.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        if s.u.state == TCP_LISTEN or (s.u.type != socket.SOCK_DGRAM and s.u.state != TCP_ESTABLISHED):
            # no receive queue of data: an unconnected stream socket cannot even be read (EINVAL), nor a
            # seqpacket one (ENOTCONN)
            return
        try:
            if s.u.type == socket.SOCK_STREAM:
                try:
                    sock.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    raise s.refuse("with urgent data (MSG_OOB) queued", "ckpt does not keep it: let the program read it")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: no urgent byte
                        raise
            msgs = _read_queue(s, sock, by_ino.get(s.u.peer_ino), notes)
            try:
                if carried is None and any(m.fds for m in msgs):
                    n = sum(len(m.fds) for m in msgs)
                    raise s.refuse(f"with {n} descriptor(s) in flight (SCM_RIGHTS) in its receive queue",
                                   "this dump does not keep descriptors in flight: dump once the program has "
                                   "received them")
                rights = [[carried(fd) for fd in m.fds] if m.fds and carried is not None else [] for m in msgs]
            finally:
                _close_fds(msgs)
        finally:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, own_off)
    if not msgs:
        return
    if s.u.state != TCP_ESTABLISHED and (not s.u.name or s.u.name_inherited):
        raise s.refuse(f"with {len(msgs)} message(s) queued but neither connected nor bound: ckpt could not put "
                       "them back")
    if s.u.state == TCP_ESTABLISHED and (peer := by_ino.get(s.u.peer_ino)) is not None \
            and peer.u.peer_ino != s.u.ino and not s.u.name:
        raise s.refuse(f"with {len(msgs)} message(s) queued from a peer that is not connected to it and no name "
                       "to send them to: ckpt could not put them back")
    if s.u.type == socket.SOCK_STREAM:  # one entry of bytes, cut around each message that carries descriptors
        run: list[bytes] = []
        for m, ids in zip(msgs, rights):
            if ids and run:
                s.u.queue.append(b"".join(run))
                run = []
            if ids:
                s.u.in_flight.add(index=len(s.u.queue), file_ids=ids)
                s.u.queue.append(m.data)
            else:
                run.append(m.data)
        if run:
            s.u.queue.append(b"".join(run))
    else:
        for m, ids in zip(msgs, rights):
            if ids:
                s.u.in_flight.add(index=len(s.u.queue), file_ids=ids)
            s.u.queue.append(m.data)
        if s.u.state != TCP_ESTABLISHED and any(m.addr for m in msgs):
            senders = [_named_sender(s, m.addr, by_ino) if m.addr else 0 for m in msgs]
            if any(senders):
                s.u.senders.extend(senders)
            lost = sum(1 for ino, m in zip(senders, msgs) if m.addr and not ino)
            if lost:
                lose("datagram-senders", tolerate, s.where(), f"{lost} datagram(s) queued on "
                     f"{show_name(s.u.name)} with their senders' addresses (restored as sent from an unnamed "
                     "socket)", notes)


def _named_sender(s: _Sock, addr: bytes, by_ino: Mapping[int, _Sock]) -> int:
    """The socket of the tree a datagram queued on ``s`` is sent again from, so that it comes from its sender's
    name: one bound to that name and connected to ``s`` (so made in its group, before its queue is filled);
    0 if there is none."""
    for t in by_ino.values():
        if t.u.peer_ino == s.u.ino and bytes(t.u.name) == addr and t.u.type == s.u.type and not t.u.name_inherited:
            return t.u.ino
    return 0


def _read_queue(s: _Sock, sock: socket.socket, peer: _Sock | None, notes: list[str]) -> list[_Message]:
    """The receive queue, peeked; a datagram queue with zero-length messages a peek cannot see is read and
    put back instead, when its peer is a socket of the tree that can send them again — else refused."""
    msgs = _peek_all(s, sock)
    passes = [n for o, n in ((SO_PASSCRED, "SO_PASSCRED"), (SO_PASSPIDFD, "SO_PASSPIDFD"))
              if any(x.level == socket.SOL_SOCKET and x.name == o and bytes(x.value) != bytes(4) for x in s.u.options)]
    if msgs and passes:  # before anything is read and sent again (which would make them ckpt's already)
        _close_fds(msgs)
        raise s.refuse(f"with {' and '.join(passes)} set and {len(msgs)} message(s) queued: a read of them gets "
                       "their senders' credentials, which a restore cannot give them again (they would be ckpt's)",
                       "let the program read its queue, then dump")
    mutual = peer is not None and peer.u.peer_ino == s.u.ino
    if s.u.type == socket.SOCK_STREAM:
        if not any(m.fds and len(m.data) > 1 for m in msgs):
            return msgs  # every message with descriptors is one byte: the peeks cut the stream exactly
        if not mutual or peer is None or s.u.shutdown & RCV_SHUTDOWN or peer.u.shutdown & SEND_SHUTDOWN:
            notes.append(f"{s.where()}: bytes queued before a message carrying descriptors are kept with it (no "
                         "peer in the tree to put the stream back from): a read of them gets the descriptors")
            return msgs
        _close_fds(msgs)
        split = _split_stream(s, sock, peer, notes)
        if any(o.name == SO_PASSCRED for o in s.u.options):
            notes.append(f"{s.where()}: its queued stream was read and sent again by ckpt to find where descriptors "
                         "in flight start: the sender credentials (SCM_CREDENTIALS) of its bytes are now ckpt's")
        return split
    try:
        hidden = _head_hidden(sock, msgs) or (mutual and _hidden_messages(s.u.type, msgs, peer.diag if peer else None))
    except BaseException:
        _close_fds(msgs)
        raise
    if not hidden:
        return msgs
    _close_fds(msgs)
    if not mutual or peer is None or s.u.shutdown & RCV_SHUTDOWN or peer.u.shutdown & SEND_SHUTDOWN:
        raise s.refuse("with zero-length messages queued that were peeked before (MSG_PEEK: by the program, or by "
                       "an earlier `ckpt dump -R`), which a peek at an offset does not show",
                       "let the program read its queue, then dump")
    stolen = _steal_and_put_back(s, sock, peer, max((len(m.data) for m in msgs), default=0))
    notes.append(f"{s.where()}: its {len(stolen)} queued {s.kind} message(s) were read and sent again by ckpt (zero-length "
                 "ones peeked before cannot be peeked): their sender credentials (SCM_CREDENTIALS) are now ckpt's")
    return stolen


def _recv_upto(sock: socket.socket, n: int) -> _Message:
    """Up to ``n`` bytes of a stream queue, stopping early at descriptors (kept with the bytes) or at its end:
    what was read must be sent back whatever it turned out to be."""
    out, fds = bytearray(), ()
    while len(out) < n and not fds:
        try:
            data, anc, _, _ = sock.recvmsg(n - len(out), _CMSG_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        fds, _ = _received(anc)
        if not data:
            break
        out += data
    return _Message(bytes(out), fds, b"")


def _split_stream(s: _Sock, sock: socket.socket, peer: _Sock, notes: list[str]) -> list[_Message]:
    """Read the stream queue of ``s``, cut where each message with descriptors starts, and send it all again
    from its peer (frozen too): the queue is as it was, cut the same way.

    A peek shows each run of bytes that ends with such a message; reading
    that run one byte at a time, the read that gets the descriptors is the
    message's first byte (up to :data:`_MAX_BYTEWISE` bytes: beyond, the run
    stays whole, with a note).
    """
    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)  # peeks at the head; the caller puts the offset back
    msgs: list[_Message] = []
    try:
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(_PEEK_BUF, _CMSG_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            peeked, _ = _received(anc)
            for fd in peeked:
                os.close(fd)
            if not data:
                break
            if not peeked:
                msgs.append(_recv_upto(sock, len(data)))
                continue
            msgs.extend(_cut_run(s, sock, len(data), notes))
    finally:
        if msgs:
            _send_back(s, peer, msgs)
    return msgs


def _cut_run(s: _Sock, sock: socket.socket, n: int, notes: list[str]) -> list[_Message]:
    """Read the ``n`` bytes of a run that ends with a message carrying descriptors: the bytes before that
    message (read one at a time until a read brings the descriptors), then the message."""
    prefix = bytearray()
    while len(prefix) < _MAX_BYTEWISE:
        one = _recv_upto(sock, 1)
        head = [_Message(bytes(prefix), (), b"")] if prefix else []
        if one.fds:  # the first byte of the message: the rest of it follows (its descriptors taken: no stop)
            rest = _recv_upto(sock, n - len(prefix) - 1)
            return [*head, _Message(one.data + rest.data, one.fds + rest.fds, b"")]
        if not one.data:  # the queue ended early: keep what was read
            return head
        prefix += one.data
    rest = _recv_upto(sock, n - len(prefix))  # give up cutting: the rest of the run, with its descriptors
    notes.append(f"{s.where()}: {len(prefix)}+ bytes queued before a message carrying descriptors are kept with it")
    return [_Message(bytes(prefix) + rest.data, rest.fds, b"")]


def _rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _send_all(sock: socket.socket, data: bytes, fds: Sequence[int], addr: bytes | None = None, *,
              stream: bool) -> int:
    """Send one queued message with the descriptors it carried; the bytes sent.

    A stream's bytes go in as many sends as it takes, the descriptors with the
    first (a reader's read stops after that message, as before); fewer bytes
    are sent when it stops taking them (EAGAIN).  A datagram goes whole or raises.
    """
    view, anc, sent = memoryview(data), _rights(fds), 0
    while view or not stream:
        try:
            n = (sock.sendmsg([view], anc, socket.MSG_DONTWAIT) if addr is None
                 else sock.sendmsg([view], anc, socket.MSG_DONTWAIT, addr))
        except BlockingIOError:
            if not stream:
                raise
            break
        sent, view, anc = sent + n, view[n:], []
        if not stream:
            break
    return sent


def _send_back(s: _Sock, peer: _Sock, msgs: Sequence[_Message]) -> None:
    """Send ``msgs`` (read from ``s``) again, in order, from its peer; loud if they cannot be: they exist only here."""
    stream = s.u.type == socket.SOCK_STREAM
    try:
        with borrowed(peer.pid, peer.fd) as out:
            for m in msgs:
                if _send_all(out, m.data, m.fds, stream=stream) < len(m.data):
                    raise BlockingIOError(errno.EAGAIN, "its peer's send buffer is full")
    except OSError as exc:
        _close_fds(msgs)
        raise CkptError(f"{s.where()}: could not send its {len(msgs)} queued messages back: {exc}; "
                        "the target lost them") from exc


def _steal_and_put_back(s: _Sock, sock: socket.socket, peer: _Sock, biggest: int) -> list[_Message]:
    """Read every message of ``s``'s queue and send each again, in order, from its peer (frozen too, and the
    only socket that can send to it): the queue is as it was, its messages new (not peeked)."""
    msgs: list[_Message] = []
    try:
        while True:
            try:
                data, anc, flags, _ = sock.recvmsg(max(biggest, 1) + _PEEK_BUF, _CMSG_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            fds, _ = _received(anc)
            msgs.append(_Message(data, fds, b""))
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise CkptError(f"{s.where()}: a queued message was truncated when read")
    finally:
        if msgs:
            _send_back(s, peer, msgs)
    return msgs


# --- restore ------------------------------------------------------------------------------------

def groups(files: Sequence[FileEntry]) -> list[list[int]]:
    """FileEntry ids of the unix sockets that must be created together (more than one each): the two ends of
    a connection, a listener with the connections accepted from it and those waiting in its queue."""
    socks = {e.unix.ino: e for e in files if e.kind == K.UNIX and e.unix.ino}
    parent: dict[int, int] = {e.id: e.id for e in socks.values()}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for e in socks.values():
        u = e.unix
        for other in (u.peer_ino, u.listener_ino, *u.pending):
            if other in socks:
                parent[root(e.id)] = root(socks[other].id)
    out: dict[int, list[int]] = {}
    for i in parent:
        out.setdefault(root(i), []).append(i)
    return [sorted(ids) for ids in out.values() if len(ids) > 1]


def _clear_stale_path(path: bytes) -> None:
    """A bound socket's path outlives the socket: remove it if no open socket is bound there any more."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RestoreError(f"{os.fsdecode(path)!r} exists and is not a socket: the unix socket cannot bind there")
    try:
        live = any(d.vfs == (st.st_dev, st.st_ino) for d in unix_sockets().values())
    except OSError:  # no sock_diag: a listener that answers is alive, anything else is taken for stale
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                live = True
            except OSError:
                live = False
    if live:
        raise RestoreError(f"the unix socket {os.fsdecode(path)!r} is bound by an open socket (another process)",
                           hint="stop it, or restore when the socket path is free")
    os.unlink(path)


def _sockaddr(name: bytes) -> bytes:
    """struct sockaddr_un for a name as getsockname gave it (a path gets its NUL back)."""
    return struct.pack("<H", socket.AF_UNIX) + name + (b"\0" if name and name[0] != 0 else b"")


@dataclass
class _Builder:
    """Creates one group inside the helper of ``inj``; ``fds`` maps each FileEntry id to its fd there."""

    inj: Injector
    s: Scratch
    members: list[FileEntry]
    #: FileEntry id → a descriptor of ckpt on that file, to send in flight (the caller's to close).
    carried: Callable[[int], int] | None = None
    fds: dict[int, int] = field(default_factory=dict)
    #: FileEntry id → the fd of a stand-in peer (a socket whose peer is gone), closed once its queue is filled.
    standins: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_ino = {e.unix.ino: e for e in self.members if e.unix.ino}

    def build(self) -> None:
        ms = sorted(self.members, key=lambda e: e.id)
        listeners = [e for e in ms if e.unix.state == TCP_LISTEN]
        for e in listeners:
            self.fds[e.id] = self.socket(e)
            self.inj.call(NR.listen, self.fds[e.id], backlog_of(e.unix), name="listen")
        for e in ms:  # connections accepted from a listener of the group: re-made through it, each at once
            if e.unix.listener_ino in self.by_ino and e.id not in self.fds:
                self.accepted(e, self.by_ino[e.unix.listener_ino])
        for lst in listeners:  # connections waiting to be accepted, in queue order
            for client in lst.unix.pending:
                c = self.by_ino.get(client)
                if c is None:
                    raise RestoreError(f"the unix listener of file {lst.id} waits for socket:[{client}], which the "
                                       "image does not have")
                self.fds[c.id] = self.socket(c)
                self.connect(self.fds[c.id], lst, c)
        one_way = []
        for e in ms:
            if e.id in self.fds:
                continue
            u = e.unix
            peer = self.by_ino.get(u.peer_ino) if u.peer_ino else None
            if u.state != TCP_ESTABLISHED:
                self.fds[e.id] = self.socket(e)
            elif peer is not None and peer.unix.peer_ino == u.ino:
                self.fds[e.id], self.fds[peer.id] = self.pair(e, peer)
            elif peer is not None:  # a datagram socket connected to a named one that is not connected back
                self.fds[e.id] = self.socket(e)
                one_way.append((e, peer))
            else:  # its peer is gone (or outside, --ext-unix-close): a stand-in, closed below
                self.fds[e.id], self.standins[e.id] = self.pair(e, None)
                self.big_sndbuf(self.standins[e.id])
        for e, peer in one_way:  # once every name of the group is bound
            self.connect(self.fds[e.id], peer, e)
        self.fill(ms)
        for e in ms:  # SO_PASSCRED & co last: with them, connect() and a send from an unnamed socket autobind it
            setopts(self.inj, self.s, self.fds[e.id], [o for o in e.unix.options if _late(o)])
        for e in ms:
            how = _SHUT_HOW.get(e.unix.shutdown & (RCV_SHUTDOWN | SEND_SHUTDOWN))
            if how is not None and e.unix.state != TCP_LISTEN:
                self.inj.call(NR.shutdown, self.fds[e.id], how, name=f"shutdown({self.fds[e.id]}, {how})")
        for fd in self.standins.values():
            self.inj.close(fd)
        self.standins.clear()
        for e in ms:
            fd = self.fds[e.id]
            self.inj.call(NR.fcntl, fd, fcntl.F_SETFL, e.flags & _SETFL_MASK, name=f"fcntl({fd}, F_SETFL)")

    # -- creating ---------------------------------------------------------------------------------

    def raw(self, stype: int) -> int:
        return self.inj.call(NR.socket, socket.AF_UNIX, stype | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0,
                             name="socket(AF_UNIX)")

    def socket(self, e: FileEntry) -> int:
        """A new socket of ``e``'s type with its options and, if it is its own, its name."""
        fd = self.raw(e.unix.type)
        try:
            self.dress(fd, e)
        except BaseException:
            self.inj.close(fd)
            raise
        return fd

    def dress(self, fd: int, e: FileEntry) -> None:
        setopts(self.inj, self.s, fd, _early(e))
        name = bytes(e.unix.name)
        if name and not e.unix.name_inherited:
            if name[0] != 0:
                _clear_stale_path(name)
            addr = _sockaddr(name)
            self.s.write(0, addr)
            try:
                self.inj.call(NR.bind, fd, self.s.addr, len(addr), name=f"bind({name!r})")
            except OSError as exc:
                raise RestoreError(f"cannot bind the unix socket of file {e.id} to {show_name(name)}: {exc.strerror}",
                                   hint="the name must be free (is the dumped process still running?)") from exc
            if e.unix.name_unlinked:  # its file had been deleted: named, and no file there
                self.s.write(0, name + b"\0")
                self.inj.call(NR.unlinkat, _AT_FDCWD, self.s.addr, 0, name=f"unlinkat({name!r})")
            elif e.unix.HasField("file_mode"):  # as the dump found it, not as the umask made it
                self.s.write(0, name + b"\0")
                self.inj.call(NR.fchownat, _AT_FDCWD, self.s.addr, e.unix.file_uid, e.unix.file_gid, 0,
                              name=f"fchownat({name!r})")
                self.inj.call(NR.fchmodat, _AT_FDCWD, self.s.addr, e.unix.file_mode, name=f"fchmodat({name!r})")

    def pair(self, a: FileEntry, b: FileEntry | None) -> tuple[int, int]:
        """``socketpair`` for ``a`` and ``b`` (None: a bare stand-in end)."""
        self.inj.call(NR.socketpair, socket.AF_UNIX, a.unix.type | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0,
                      self.s.addr, name="socketpair(AF_UNIX)")
        raw = self.s.read(0, 8)
        fa, fb = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        try:
            self.dress(fa, a)
            if b is not None:
                self.dress(fb, b)
        except BaseException:
            self.inj.close(fa)
            self.inj.close(fb)
            raise
        return fa, fb

    def big_sndbuf(self, fd: int) -> None:
        """A stand-in sends a whole queue that a sender with a bigger SO_SNDBUF may have queued."""
        self.s.write(0, _INT.pack(_STANDIN_SNDBUF))
        self.inj.call(NR.setsockopt, fd, socket.SOL_SOCKET, SO_SNDBUFFORCE, self.s.addr, 4, name="setsockopt(SO_SNDBUFFORCE)")

    def connect(self, fd: int, to: FileEntry, e: FileEntry) -> None:
        addr = _sockaddr(bytes(to.unix.name))
        self.s.write(0, addr)
        try:
            self.inj.call(NR.connect, fd, self.s.addr, len(addr), name=f"connect({show_name(bytes(to.unix.name))})")
        except OSError as exc:
            raise RestoreError(f"cannot connect the unix socket of file {e.id} to {show_name(bytes(to.unix.name))} "
                               f"again: {exc.strerror}") from exc

    def accepted(self, e: FileEntry, listener: FileEntry) -> None:
        """connect() a client — ``e``'s peer, or a stand-in if it is gone — to the listener, and accept ``e``."""
        client = self.by_ino.get(e.unix.peer_ino) if e.unix.peer_ino else None
        if client is not None:
            cfd = self.fds[client.id] = self.socket(client)
            self.connect(cfd, listener, client)
        else:
            cfd = self.standins[e.id] = self.raw(e.unix.type)
            self.big_sndbuf(cfd)
            self.connect(cfd, listener, e)
        lfd = self.fds[listener.id]
        fd = self.inj.call(NR.accept4, lfd, 0, 0, socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, name=f"accept4({lfd})")
        self.fds[e.id] = fd
        setopts(self.inj, self.s, fd, _early(e))

    # -- queues -----------------------------------------------------------------------------------

    def fill(self, ms: Sequence[FileEntry]) -> None:
        """Every queue, written from here through a duplicate of the socket that sends to it."""
        todo = [e for e in ms if e.unix.queue]
        if not todo:
            return
        pidfd = pidfd_open(self.inj.pid)
        try:
            for e in todo:
                sender, addr = self.sender(e)
                rights = {f.index: list(f.file_ids) for f in e.unix.in_flight}
                named = list(e.unix.senders)  # a datagram's own sender, connected to e (UnixSocket.senders)
                with ExitStack() as held:
                    socks: dict[int | None, socket.socket] = {}

                    def through(fd: int | None) -> socket.socket:
                        if fd not in socks:
                            socks[fd] = held.enter_context(self.borrowed(pidfd, fd, e.unix.type))
                        return socks[fd]

                    for i, data in enumerate(e.unix.queue):
                        fds = self.rights(rights.get(i, ()), e)
                        own = self.by_ino.get(named[i]) if i < len(named) and named[i] else None
                        try:
                            if e.unix.type == socket.SOCK_STREAM:
                                _send_stream(through(sender), bytes(data), e, fds)
                            elif own is not None:
                                _send_message(through(self.fds[own.id]), bytes(data), None, e, fds)
                            else:
                                _send_message(through(sender), bytes(data), addr, e, fds)
                        finally:
                            for fd in fds:
                                os.close(fd)
        finally:
            os.close(pidfd)

    def rights(self, file_ids: Sequence[int], e: FileEntry) -> list[int]:
        """Descriptors of ckpt on the files a queued message carries (a socket of this group, or any file)."""
        out: list[int] = []
        try:
            for i in file_ids:
                if i in self.fds:
                    out.append(dup_from(self.inj.pid, self.fds[i]))
                elif self.carried is not None:
                    out.append(self.carried(i))
                else:
                    raise RestoreError(f"the unix socket of file {e.id} has file {i} in flight, and nothing opens it")
        except BaseException:
            for fd in out:
                os.close(fd)
            raise
        return out

    def sender(self, e: FileEntry) -> tuple[int | None, bytes | None]:
        """(fd in the helper that sends to ``e``, address to send to); fd None: an unnamed socket of ours."""
        if e.id in self.standins:
            return self.standins[e.id], None
        u = e.unix
        peer = self.by_ino.get(u.peer_ino) if u.peer_ino else None
        if peer is not None:
            return self.fds[peer.id], None if peer.unix.peer_ino == u.ino else bytes(u.name)
        if u.state != TCP_ESTABLISHED and u.name:
            return None, bytes(u.name)
        raise RestoreError(f"the unix socket of file {e.id} has queued data but nothing that can send it")

    @contextmanager
    def borrowed(self, pidfd: int, fd: int | None, stype: int) -> Iterator[socket.socket]:
        if fd is None:
            sock = socket.socket(socket.AF_UNIX, stype)
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, _STANDIN_SNDBUF)
        else:
            sock = socket.socket(fileno=pidfd_getfd(pidfd, fd))
        try:
            yield sock
        finally:
            sock.close()

    def close_all(self) -> None:
        for fd in [*self.fds.values(), *self.standins.values()]:
            self.inj.close(fd)
        self.fds.clear()
        self.standins.clear()


def _late(o: files_pb2.SockOpt) -> bool:
    return o.level == socket.SOL_SOCKET and o.name in _FLAG_OPTIONS


def _early(e: FileEntry) -> list[files_pb2.SockOpt]:
    """The options set when the socket is created: all but those that would make it autobind (set last)."""
    return [o for o in e.unix.options if not _late(o)]


def _send_stream(sock: socket.socket, data: bytes, e: FileEntry, fds: Sequence[int] = ()) -> None:
    """Bytes of a stream queue, ``fds`` with the first of them (:func:`_send_all`)."""
    sent = _send_all(sock, data, fds, stream=True)
    if sent < len(data):
        raise RestoreError(f"the unix stream socket of file {e.id}: its {len(data)} queued bytes do not fit "
                           f"again ({sent} written)")


def _send_message(sock: socket.socket, data: bytes, addr: bytes | None, e: FileEntry,
                  fds: Sequence[int] = ()) -> None:
    try:
        _send_all(sock, data, fds, addr, stream=False)
    except OSError as exc:
        raise RestoreError(f"the unix {TYPE_NAMES.get(e.unix.type, e.unix.type)} socket of file {e.id}: a queued "
                           f"message of {len(data)} bytes could not be put back: {exc.strerror}") from exc


@dataclass
class UnixRestorer:
    """Creates each group of unix sockets once, in the process of ``inj``, and hands out the members."""

    inj: Injector
    scratch: Scratch
    files: Sequence[FileEntry]
    #: FileEntry id → a descriptor of ckpt on that file, for the queues that hold it in flight.
    carried: Callable[[int], int] | None = None
    #: FileEntry id → fd of a created socket no descriptor of this process has taken yet.
    unclaimed: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_id = {e.id: e for e in self.files}
        self._group_of: dict[int, list[FileEntry]] = {}
        for ids in groups(self.files):
            members = [by_id[i] for i in ids]
            for i in ids:
                self._group_of[i] = members

    def open(self, e: FileEntry) -> int:
        """A temporary fd of ``e`` (its status flags set); its group is created now if it is not yet."""
        if e.id not in self.unclaimed:
            b = _Builder(self.inj, self.scratch, self._group_of.get(e.id, [e]), self.carried)
            try:
                b.build()
            except BaseException:
                b.close_all()
                raise
            if any(i in self.unclaimed for i in b.fds):
                raise RestoreError(f"unix socket of file {e.id}: its group was created twice")
            self.unclaimed.update(b.fds)
        return self.unclaimed.pop(e.id)

    def close(self) -> None:
        """Close what no descriptor of this process took (the restorer holds a duplicate if another needs it)."""
        for fd in self.unclaimed.values():
            self.inj.close(fd)
        self.unclaimed.clear()


def _no_dump(d: FdDump, entry: FileEntry) -> None:
    raise AssertionError("a unix socket is described by ckpt.resources.sockets, its peers by dump_tree")


def restore(r: Opener, entry: FileEntry, fds: list[int]) -> int:
    """The socket of ``entry``, with its group (peers, listener) created now if it is not yet."""
    return set_status_flags(r, r.unix_socks.open(entry), entry)


#: Never claimed: every socket is claimed as inet, and :func:`ckpt.resources.sockets.dump` makes it UNIX.
KIND = FdKind(FileEntry.UNIX, None, _no_dump, restore)
