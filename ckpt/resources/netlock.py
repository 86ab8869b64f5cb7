"""The network lock: nftables rules that drop a dumped connection's incoming packets until it is restored.

Between the moment a dump reads a connection's state and the moment a
restore puts it back, the peer must not get an answer from this host: an
ACK for data the image does not hold would lose it, and a packet that finds
no socket (the dumped process is gone) is answered with a RST, which ends the
connection.  So before reading a connection, ckpt adds one rule that drops
the peer's packets to it; the peer just retransmits (measured here: the next
retransmission after the unlock gets through, 0.1-0.7 s later), and the
restore deletes the rule once the socket is back.  CRIU does the same with
iptables or nft.

Each rule sits in a base chain ``lock`` hooked at prerouting with priority
raw (-300): before conntrack, so dropped packets leave no trace there.  It
matches addresses and ports of both ends (and lets through packets marked
:data:`REPAIR_MARK`, made up by a restore) and carries a comment, the *tag*
(:func:`tag`), that names the dump — the ckpt run as (pid, start time), the
connection's process as (pid, start time), its fd.  ckpt speaks nf_tables
over netlink itself (:mod:`ckpt.kernel.nftables`); ``nft list ruleset``
shows the rules as ``ip saddr … drop comment "ckpt …"``.

Who holds a lock, and what a SIGKILL of ckpt leaves:

* While a ckpt process holds a connection (a dump in progress, ``-R``, a
  migration's source until the destination runs the process) its rules live
  in a table of its own, ``table inet ckpt-<pid>``, created with
  NFT_TABLE_F_OWNER on its own netlink socket (a :class:`Holder`): the
  kernel deletes it when that socket is closed, so a ckpt killed there
  leaves no rule — and the kernel lets its target go, connection included.
* A dump that ends its target (and only then) makes the lock outlive it:
  :meth:`Holder.persist` adds the same rules to the shared ``table inet ckpt``
  and deletes its own table in one transaction (no instant without the rule,
  none with both), before the target is killed.  The restore deletes the rule
  by its tag (:func:`unlock`); the table goes with its last rule.
* A kernel older than 5.12 refuses NFT_TABLE_F_OWNER: the held rules then go
  straight into ``table inet ckpt``, their comment the tag plus `` held``
  (a note says so), and persisting them rewrites the comment to the bare tag.

A ckpt killed while a rule of ``table inet ckpt`` harms a running process —
a held rule of a pre-5.12 kernel, or a persisted rule whose dump was killed
before it ended its target — leaves it behind; the next ckpt run that touches
the table in that network namespace (a dump with ``--tcp-established``, a
restore that unlocks a connection) removes every rule whose run is gone and
that is either held or locks a process still running as the one dumped
(:func:`sweep`), with a note.  A persisted rule whose process is gone stays:
it waits for the restore.

ckpt processes serialize their edits of ``table inet ckpt`` with a flock, so
one never deletes the table under another's new rule; owned tables need
none.  A connection of a process in another network namespace is locked
there: the netlink socket is created in that namespace (see
:meth:`ckpt.kernel.nftables.NftSocket.open`).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import itertools
import os
import re
import socket
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import CkptError, Unsupported
from ..kernel import nftables as nft
from ..procfs.task import read_starttime

__all__ = ["TABLE", "CHAIN", "HELD", "REPAIR_MARK", "Lock", "NetlockError", "Holder", "tag", "require", "unlock", "sweep",
           "locked"]

TABLE = "ckpt"
CHAIN = "lock"
#: What a held rule's comment adds to its tag when it cannot live in an owned table (kernels < 5.12).
HELD = " held"
#: The packet mark (SO_MARK) a lock lets through: the segments the restore itself makes up in the peer's name
#: (a FIN or an ACK it had sent, :mod:`ckpt.resources.tcp_states`), which must reach the socket while it is locked.
REPAIR_MARK = 0x636B7074  # "ckpt"
_FAMILY = nft.NFPROTO_INET
_LOCKFILE = "/run/ckpt-netlock.lock"
_TAG_RE = re.compile(r"ckpt \S+ run (\d+)-(\d+) pid (\d+)-(\d+) fd \d+ pidns (\d+)")
_owned_names = itertools.count(1)


class NetlockError(CkptError):
    """The kernel refused to add or remove a lock rule."""


@dataclass(frozen=True)
class Lock:
    """One connection's rule: packets from ``peer``:``peer_port`` to ``local``:``local_port`` are dropped.

    ``family`` is the packets' (AF_INET for an IPv6 socket talking to an
    IPv4-mapped address: its packets are IPv4 on the wire).
    """

    family: int
    local: str
    local_port: int
    peer: str
    peer_port: int
    tag: str

    @classmethod
    def of(cls, family: int, local: tuple[str, int], peer: tuple[str, int], tag: str) -> "Lock":
        """The lock of a socket of ``family`` between (host, port) ``local`` and ``peer``, as getsockname gives them."""
        hosts = [ipaddress.ip_address(h.split("%", 1)[0]) for h in (local[0], peer[0])]
        if family == socket.AF_INET6 and all(getattr(h, "ipv4_mapped", None) for h in hosts):
            family, hosts = socket.AF_INET, [h.ipv4_mapped for h in hosts]  # type: ignore[union-attr]
        if '"' in tag or len(tag) > 120:
            raise ValueError(f"not a usable nft comment: {tag!r}")
        return cls(family, str(hosts[0]), local[1], str(hosts[1]), peer[1], tag)

    def exprs(self) -> list[bytes]:
        """The rule's expressions: what nft compiles :meth:`rule` to."""
        v4 = self.family == socket.AF_INET
        size, saddr, daddr = (4, 12, 16) if v4 else (16, 8, 24)  # struct iphdr / ipv6hdr offsets
        net, l4 = nft.NFT_PAYLOAD_NETWORK_HEADER, nft.NFT_PAYLOAD_TRANSPORT_HEADER
        return [nft.meta(nft.NFT_META_NFPROTO), nft.cmp_eq(bytes([nft.NFPROTO_IPV4 if v4 else nft.NFPROTO_IPV6])),
                nft.payload(net, saddr, size), nft.cmp_eq(socket.inet_pton(self.family, self.peer)),
                nft.payload(net, daddr, size), nft.cmp_eq(socket.inet_pton(self.family, self.local)),
                nft.meta(nft.NFT_META_L4PROTO), nft.cmp_eq(bytes([socket.IPPROTO_TCP])),
                nft.payload(l4, 0, 4),  # source and destination port, one 4-byte load as nft makes it
                nft.cmp_eq(self.peer_port.to_bytes(2, "big") + self.local_port.to_bytes(2, "big")),
                nft.meta(nft.NFT_META_MARK), nft.cmp_eq(REPAIR_MARK.to_bytes(4, "little"), op=nft.NFT_CMP_NEQ),
                nft.verdict(nft.NF_DROP)]

    def rule(self, comment: str | None = None) -> str:
        """The rule as ``nft list`` shows it."""
        ip = "ip" if self.family == socket.AF_INET else "ip6"
        return (f"{ip} saddr {self.peer} {ip} daddr {self.local} tcp sport {self.peer_port} "
                f"tcp dport {self.local_port} meta mark != 0x{REPAIR_MARK:08x} "
                f"drop comment \"{self.tag if comment is None else comment}\"")

    def __str__(self) -> str:
        def at(host: str, port: int) -> str:
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{at(self.local, self.local_port)} <- {at(self.peer, self.peer_port)}"


def _starttime(pid: int) -> int | None:
    try:
        return read_starttime(pid)
    except (CkptError, OSError, ValueError):
        return None


def _pidns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def tag(token: str, pid: int, fd: int) -> str:
    """The tag of the lock of ``pid``'s connection at ``fd``, taken by this run (``token`` names the dump).

    Both processes are named as pid-starttime, in the PID namespace named
    last (a ckpt in a container shares the host's network namespace at times).
    """
    me = os.getpid()
    return f"ckpt {token} run {me}-{_starttime(me) or 0} pid {pid}-{_starttime(pid) or 0} fd {fd} pidns {_pidns()}"


def _lost(comment: str) -> str | None:
    """Why the rule with ``comment`` no longer locks anything worth locking, or None (it may still matter).

    Only rules whose run is gone are judged; tags of other forms (older
    images), or of runs in another PID namespace, never.
    """
    m = _TAG_RE.fullmatch(comment.removesuffix(HELD))
    if m is None or int(m[5]) != _pidns():
        return None
    run, run_start, pid, start = (int(g) for g in m.groups()[:4])
    if _starttime(run) == run_start:
        return None  # its run still holds it
    if comment.endswith(HELD):
        return f"held by ckpt run {run}, which was killed"
    if _starttime(pid) == start:
        return f"ckpt run {run} was killed before it ended process {pid}, which runs on"
    return None  # its process is gone: the rule waits for the restore


def _refused(what: str, exc: OSError) -> NetlockError:
    return NetlockError(f"nf_tables refused to {what}: {exc.strerror or exc}")


def require() -> None:
    """Unsupported, saying why, if this kernel cannot lock connections (no nf_tables)."""
    try:
        with nft.NftSocket.open() as s:
            s.generation()
    except OSError as exc:
        raise Unsupported(f"--tcp-established needs nf_tables (nftables) in the kernel to lock connections while "
                          f"they are dumped, and it does not answer: {exc.strerror or exc}",
                          hint="load the nf_tables module (modprobe nf_tables), or use --tcp-close to restore "
                               "the connections closed") from exc


class _Serialized:
    """An exclusive flock shared by every ckpt process that edits ``table inet ckpt``."""

    def __enter__(self) -> "_Serialized":
        self.fd = os.open(_LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # drops the flock


def _persistent(locks: Sequence[Lock], comments: Sequence[str]) -> list[nft.Message]:
    """Messages adding ``locks`` (with ``comments``) to ``table inet ckpt``, table and chain made if needed."""
    return [nft.new_table(_FAMILY, TABLE),
            nft.new_chain(_FAMILY, TABLE, CHAIN, nft.NF_INET_PRE_ROUTING, nft.NF_IP_PRI_RAW),
            *(nft.new_rule(_FAMILY, TABLE, CHAIN, lk.exprs(), c) for lk, c in zip(locks, comments))]


def _delete(s: nft.NftSocket, doomed: Collection[int], of: int, what: str) -> None:
    """Delete the rules with handles ``doomed`` from ``table inet ckpt`` (of ``of`` rules): the table if none stays."""
    if not doomed:
        return
    if len(doomed) == of:
        msgs = [nft.del_table(_FAMILY, TABLE)]
    else:
        msgs = [nft.del_rule(_FAMILY, TABLE, CHAIN, h) for h in doomed]
    try:
        s.batch(msgs, what)
    except OSError as exc:
        raise _refused(what, exc) from exc


def _sweep(s: nft.NftSocket) -> list[str]:
    """Remove the rules killed runs left in ``table inet ckpt`` that no restore waits for (the flock held)."""
    rules = s.rules(_FAMILY, TABLE, CHAIN)
    stale = {r.handle: (r.comment, why) for r in rules if r.comment and (why := _lost(r.comment))}
    _delete(s, stale, len(rules), "remove network locks left by killed ckpt runs")
    return [f"removed the network lock {c.removesuffix(HELD)!r} from table inet {TABLE}: {why}"
            for c, why in stale.values()]


@contextmanager
def _shared_table(netns: int | None, what: str) -> Iterator[nft.NftSocket]:
    """A socket in the network namespace ``netns``, the flock on ``table inet ckpt`` held; NetlockError for OSError."""
    try:
        with nft.NftSocket.open(netns) as s, _Serialized():
            yield s
    except OSError as exc:
        raise _refused(what, exc) from exc


def sweep(netns: int | None = None) -> list[str]:
    """Remove the rules killed ckpt runs left in ``table inet ckpt`` that harm a running process; notes on each."""
    with _shared_table(netns, "remove network locks left by killed ckpt runs") as s:
        return _sweep(s)


def unlock(tags: Collection[str], netns: int | None = None) -> list[str]:
    """Delete the rules of ``table inet ckpt`` carrying ``tags`` (any not there is skipped); the table once empty.

    ``netns``: a descriptor of the network namespace they are in (default:
    ours).  Stale rules of killed runs go too (:func:`sweep`); returns the
    notes on those.
    """
    if not tags:
        return []
    with _shared_table(netns, "delete a network lock") as s:
        notes = _sweep(s)
        rules = s.rules(_FAMILY, TABLE, CHAIN)
        _delete(s, [r.handle for r in rules if r.comment in tags], len(rules), "delete a network lock")
    return notes


def locked(netns: int | None = None) -> dict[str, str]:
    """Every lock of ckpt's tables now, held or persistent: tag → the table it is in (``ckpt`` or ``ckpt-PID``)."""
    with nft.NftSocket.open(netns) as s:
        return {r.comment.removesuffix(HELD): t.name
                for t in s.tables(_FAMILY) if t.name == TABLE or t.name.startswith(TABLE + "-")
                for r in s.rules(_FAMILY, t.name, CHAIN) if r.comment}


@dataclass
class Holder:
    """The locks one ckpt process holds in one network namespace, in a table its netlink socket owns.

    Closing it (or the death of this process) drops every lock it still
    holds, unless :meth:`persist` handed them to ``table inet ckpt`` first.
    ``notes`` gets what a user should know (stale rules removed, a kernel
    without owned tables).
    """

    netns: int | None = None
    notes: list[str] = field(default_factory=list)
    locks: list[Lock] = field(default_factory=list)
    #: Our table, once made; None on a kernel without NFT_TABLE_F_OWNER (the locks are in table inet ckpt).
    table: str | None = None
    persisted: bool = False
    _sock: nft.NftSocket | None = None

    def lock(self, locks: Sequence[Lock]) -> None:
        """Add the rules of ``locks`` in one transaction (our table and its chain too, the first time)."""
        if not locks:
            return
        first = self._sock is None
        try:
            if self._sock is None:
                self._sock = nft.NftSocket.open(self.netns)
                with _Serialized():
                    self.notes.extend(_sweep(self._sock))
                n = next(_owned_names)
                self.table = f"{TABLE}-{os.getpid()}" + (f"-{n}" if n > 1 else "")
            if self.table is not None:
                try:
                    self._sock.batch([*(self._owned_table() if first else []),
                                      *(nft.new_rule(_FAMILY, self.table, CHAIN, lk.exprs(), lk.tag) for lk in locks)],
                                     "add a network lock")
                except nft.BatchError as exc:
                    # Unknown table flags: EINVAL before Linux 5.12, EOPNOTSUPP after (for newer ones).
                    if not (first and exc.index == 0 and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP)):
                        raise
                    self.table = None
                    self.notes.append("this kernel has no nftables tables owned by a process (Linux 5.12+): the "
                                      f"network lock lives in table inet {TABLE}, and if ckpt is killed the next "
                                      "ckpt run removes it")
                else:
                    self.locks.extend(locks)
                    return
            with _Serialized():
                self._sock.batch(_persistent(locks, [lk.tag + HELD for lk in locks]), "add a network lock")
        except OSError as exc:
            raise _refused("add a network lock", exc) from exc
        self.locks.extend(locks)

    def _owned_table(self) -> list[nft.Message]:
        assert self.table is not None
        return [nft.new_table(_FAMILY, self.table, nft.NFT_TABLE_F_OWNER),
                nft.new_chain(_FAMILY, self.table, CHAIN, nft.NF_INET_PRE_ROUTING, nft.NF_IP_PRI_RAW)]

    def persist(self) -> None:
        """Make every held lock outlive this process: into ``table inet ckpt``, out of ours, in one transaction."""
        if self.persisted or not self.locks:
            self.persisted = True
            return
        assert self._sock is not None
        what = "keep a network lock for the restore"
        try:
            with _Serialized():
                msgs = _persistent(self.locks, [lk.tag for lk in self.locks])
                if self.table is not None:
                    msgs.append(nft.del_table(_FAMILY, self.table))
                else:  # there already, held: the rule with the bare tag replaces it
                    held = {r.comment: r.handle for r in self._sock.rules(_FAMILY, TABLE, CHAIN)}
                    msgs += [nft.del_rule(_FAMILY, TABLE, CHAIN, held[lk.tag + HELD]) for lk in self.locks
                             if lk.tag + HELD in held]
                self._sock.batch(msgs, what)
        except OSError as exc:
            raise _refused(what, exc) from exc
        self.table = None
        self.persisted = True

    def release(self) -> None:
        """Drop every lock still held (none once persisted) and close the socket."""
        try:
            if self._sock is not None and self.table is not None:
                self._sock.batch([nft.del_table(_FAMILY, self.table)], "delete a network lock")
                self.table = None
            elif self._sock is not None and self.locks and not self.persisted:
                with _Serialized():
                    rules = self._sock.rules(_FAMILY, TABLE, CHAIN)
                    mine = {lk.tag + HELD for lk in self.locks}
                    _delete(self._sock, [r.handle for r in rules if r.comment in mine], len(rules),
                            "delete a network lock")
        except OSError as exc:
            raise _refused("delete a network lock", exc) from exc
        finally:
            self.close(wait=self.table is not None)

    def close(self, wait: bool = True) -> None:
        """Close the socket: the kernel deletes our table, and every lock in it, before this returns.

        Closing a netlink socket of nf_tables waits until the kernel has freed
        whatever was deleted before (an RCU grace period: 15-25 ms measured
        here), maybe with the targets still frozen: without ``wait``, when
        the socket owns nothing any more, a thread of its own closes it.
        """
        sock, self._sock, self.locks = self._sock, None, []
        if sock is None:
            return
        if wait:
            sock.close()
        else:
            threading.Thread(target=sock.close, name="nft-close", daemon=True).start()
