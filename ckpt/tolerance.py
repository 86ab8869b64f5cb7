"""What a checkpoint may lose only when the user says so: the one tolerance table.

Some state cannot be put back exactly by anyone, for a reason the kernel
gives (no call creates it, or creating it needs what the restorer cannot
have).  ckpt never drops such state silently: a dump (or restore) that meets
it is refused, naming the process, the descriptor and the tolerance that
would let it through; with ``--tolerate NAME`` it goes on and the loss is a
note in its output (and in ``--json-stats``).  The README's tolerance table
is this table (a test holds them equal).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from types import MappingProxyType

from .errors import RestoreError, Unsupported, UsageError

__all__ = ["Tolerance", "TABLE", "parse", "lose", "lose_at_restore"]


@dataclass(frozen=True)
class Tolerance:
    """One kind of loss: ``lost`` is what the restored process lacks, ``why`` the kernel's reason."""

    name: str
    side: str  # "dump" or "restore": where it is met, and so which command takes the flag
    lost: str
    why: str


TABLE = MappingProxyType({t.name: t for t in (
    Tolerance("inotify-events", "dump",
              "events queued in an inotify instance and not yet read",
              "no system call queues an inotify event; only a change to a watched file makes one"),
    Tolerance("listen-queue", "dump",
              "connections waiting in a TCP listener's accept queue, not yet accepted (their clients see a reset)",
              "a connection no one has accepted belongs to no descriptor: it cannot be read in repair mode, and "
              "the kernel has no call that puts one into a listener's queue"),
    Tolerance("unix-diag", "dump",
              "a unix listener's backlog (restored as SOMAXCONN) and the connections waiting in its accept queue, "
              "when sock_diag cannot report them: the process is in another network namespace, or the kernel "
              "lacks unix_diag",
              "getsockopt has no option for either; only sock_diag reports them, for the caller's network "
              "namespace"),
    Tolerance("udp-queue", "dump",
              "datagrams queued on a UDP socket and not yet read",
              "a datagram can be queued again only by sending it, from a socket bound to its sender's address — "
              "which the sender may still hold"),
    Tolerance("raw-queue", "dump",
              "datagrams queued on a raw socket (IPv4, IPv6) and not yet read",
              "a packet can be queued on a raw socket again only by sending it, from its sender's address, and "
              "every raw socket of that protocol would receive it too"),
    Tolerance("packet-queue", "dump",
              "frames queued on a packet socket (AF_PACKET) and not yet read",
              "a frame is queued only as it crosses an interface, and sending it again would reach every "
              "other socket and host on that interface"),
    Tolerance("netlink-queue", "dump",
              "messages queued on a netlink socket and not yet read (replies, notifications of a group)",
              "only the kernel (or the sending socket) puts a message on a netlink socket's queue; no call "
              "queues one of the kernel's again"),
    Tolerance("datagram-senders", "dump",
              "the sender addresses of datagrams queued on a unix datagram socket, from a sender that is not a "
              "bound socket of the tree connected to it (they come back as sent from an unnamed socket)",
              "a datagram carries a sender name only when sent by a socket bound to it, and the sender may still "
              "hold that name"),
    Tolerance("audit-session", "dump",
              "the audit session id (/proc/PID/sessionid) of a process in another login session than ckpt's (it "
              "gets the restorer's, or a new one when its loginuid is written)",
              "no call sets a session id: the kernel hands out a new one each time a loginuid is written"),
)})


def parse(values: Iterable[str], side: str) -> frozenset[str]:
    """The names of ``--tolerate`` (repeated, or comma-separated), checked against the table; UsageError
    for a name it does not have, or one the other command takes."""
    names = frozenset(n.strip() for v in values for n in v.split(",") if n.strip())
    for n in sorted(names):
        t = TABLE.get(n)
        if t is None:
            raise UsageError(f"--tolerate {n}: no such tolerance", hint="one of: " + ", ".join(TABLE))
        if t.side != side:
            raise UsageError(f"--tolerate {n} is met by {t.side}, not {side}: give it to ckpt {t.side}")
    return names


def _hint(t: Tolerance) -> str:
    return f"--tolerate {t.name} lets the {t.side} go on without it ({t.why})"


def lose(name: str, tolerate: Collection[str], where: str, what: str, notes: list[str] | None) -> None:
    """``where`` (``process P: fd N``) would lose ``what``: a note if the user tolerates ``name``, else the
    dump is refused (Unsupported) naming the tolerance."""
    t = TABLE[name]
    if name not in tolerate:
        raise Unsupported(f"{where}: {what}, which a restore cannot bring back", hint=_hint(t))
    if notes is not None:
        notes.append(f"{where}: {what}: not kept (--tolerate {name})")


def lose_at_restore(name: str, tolerate: Collection[str], what: str, warnings: list[str]) -> None:
    """The restore's counterpart of :func:`lose`: RestoreError unless ``name`` is tolerated."""
    t = TABLE[name]
    if name not in tolerate:
        raise RestoreError(f"{what}, which this restore cannot bring back", hint=_hint(t))
    warnings.append(f"{what}: lost (--tolerate {name})")
