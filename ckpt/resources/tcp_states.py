"""The closing states of a TCP connection kept with ``--tcp-established``: who sent a FIN, and who acknowledged it.

A connection that one side or both began to close is still a connection:
data flows in the direction not shut, and the queues hold what they held.
TCP_REPAIR restores an ESTABLISHED socket (:mod:`ckpt.resources.tcp`); what
makes it CLOSE_WAIT, FIN_WAIT1 … is the FINs, one sequence number each:

========== ============ ================ ==========================================
state      our FIN      the peer's FIN   made again by
========== ============ ================ ==========================================
FIN_WAIT1  sent         —                ``shutdown(SHUT_WR)`` in repair mode
FIN_WAIT2  acknowledged —                the same, then the peer's ACK of it
CLOSING    sent         received         the shutdown, then the peer's FIN
CLOSE_WAIT —            received         the peer's FIN
LAST_ACK   sent         received (first) the peer's FIN, then the shutdown
========== ============ ================ ==========================================

* Our FIN is part of ``write_seq`` (TCP_QUEUE_SEQ of the send queue),
  SIOCOUTQ until acknowledged, SIOCOUTQNSD until sent; the queue a peek
  reads holds data only.  The restore gives the send queue the sequence
  numbers of the data and lets ``shutdown(SHUT_WR)`` add the FIN: in repair
  mode with the send queue selected the kernel counts it sent without
  sending it (the peer has it, or will get it retransmitted: its ACKs are
  dropped by the lock meanwhile).  A FIN still queued behind data never sent
  is the program's ``shutdown`` that the kernel has not carried out yet: the
  restore writes that data normally, then shuts down normally.
* The peer's FIN is part of ``rcv_nxt`` (TCP_QUEUE_SEQ of the receive
  queue).  The restore sets ``rcv_nxt`` before it, and sends the socket the
  FIN — and the ACK of our FIN in FIN_WAIT2 — as the peer did
  (:mod:`ckpt.kernel.tcp_segment`), marked so that the network lock lets it
  in (:data:`ckpt.resources.netlock.REPAIR_MARK`).
* ``shutdown(SHUT_RD)`` (the program stopped reading: reads give EOF, no FIN
  is sent) changes no state: the dump sees it by ``poll`` (POLLRDHUP) where
  no FIN of the peer explains it, and the restore shuts the socket down so
  again.  The self-check compares POLLRDHUP too (:func:`rdhup`).

``--tcp-close`` gives up a connection instead: the restore makes it a
connection its peer reset (:func:`reset_closed`), which is what the program
would have found had the connection died while it ran: the first read or
write fails with ECONNRESET, later reads give EOF, writes EPIPE.  (The kernel
answers so for a socket that got a RST; a socket that only got a FIN reads
EOF at once — but a dropped connection did not end in order, and a program
must not take it for a complete reply.)

Refused, naming the state: SYN_SENT and SYN_RECV (a handshake under way:
TCP_REPAIR cannot make one), CLOSING whose FIN was never sent (no sequence of
calls brings a socket there), and TIME_WAIT and a closed connection's CLOSE,
which no descriptor holds.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from ..errors import RestoreError
from ..kernel import tcp_repair as tr
from ..kernel.tcp_segment import TCP_ACK, TCP_FIN, TCP_RST, send_segment
from . import netlock

__all__ = ["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "CLOSING",
           "KEPT", "Fins", "fins", "refusal", "rdhup", "shut_in_repair", "peer_segment", "shut_after",
           "reset_closed"]

ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING = 1, 2, 3, 4, 5, 8, 9, 11
_CLOSE = 7
#: The states ``--tcp-established`` keeps.
KEPT = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING})
_SETTLE = 2.0  # seconds the made-up segment may take through the loopback device (it is immediate)


@dataclass(frozen=True)
class Fins:
    """Which FINs a state counts in its sequence numbers (the table of the module's docstring)."""

    ours: bool        # our FIN is in write_seq
    ours_acked: bool  # … and the peer acknowledged it
    peers: bool       # the peer's FIN is in rcv_nxt


def fins(state: int) -> Fins:
    return Fins(ours=state in (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK), ours_acked=state == FIN_WAIT2,
                peers=state in (CLOSE_WAIT, CLOSING, LAST_ACK))


def refusal(state: int, fin_queued: bool) -> str | None:
    """Why a connection in ``state`` cannot be kept (None: it can); ``fin_queued``: our FIN is not sent yet."""
    if state in (SYN_SENT, SYN_RECV):
        return "its handshake is not finished, and TCP_REPAIR makes only finished ones"
    if state not in KEPT:
        return "ckpt keeps connections from ESTABLISHED to LAST_ACK only"
    if state == CLOSING and fin_queued:
        return "its FIN waits behind data never sent while the peer's FIN is in: no sequence of calls makes that again"
    return None


def rdhup(sock: socket.socket) -> bool:
    """Is the socket's reading side shut (RCV_SHUTDOWN: the peer's FIN arrived, or ``shutdown(SHUT_RD)``)?"""
    p = select.poll()
    p.register(sock.fileno(), select.POLLRDHUP)
    return any(ev & select.POLLRDHUP for _, ev in p.poll(0))


def shut_in_repair(sk: socket.socket) -> None:
    """Our FIN, counted sent and not sent (repair mode, send queue selected): ESTABLISHED → FIN_WAIT1,
    CLOSE_WAIT → LAST_ACK."""
    tr.select_queue(sk, tr.TCP_SEND_QUEUE)
    sk.shutdown(socket.SHUT_WR)
    tr.select_queue(sk, tr.TCP_NO_QUEUE)


def _state(sk: socket.socket) -> int:
    return tr.info_options(sk).state


def peer_segment(sk: socket.socket, family: int, local: tuple, peer: tuple, *, fin: bool, ack: int, seq: int,
                 window: int, want: int, what: str) -> None:
    """The peer's FIN (``fin``) or bare ACK, sequence number ``seq``, acknowledging ``ack``, made up and sent to
    ``sk``; waits until the socket is in state ``want``.  RestoreError if it does not get there."""
    try:
        send_segment(family, (peer[0], peer[1]), (local[0], local[1]), seq, ack, TCP_ACK | (TCP_FIN if fin else 0),
                     window, netlock.REPAIR_MARK)
    except OSError as exc:
        raise RestoreError(f"cannot restore {what}: sending it the peer's {'FIN' if fin else 'ACK'}: "
                           f"{exc.strerror or exc}", hint="restoring a closing connection needs CAP_NET_RAW") from exc
    end = time.monotonic() + _SETTLE
    while (now := _state(sk)) != want:
        if time.monotonic() > end:
            raise RestoreError(f"cannot restore {what}: the peer's {'FIN' if fin else 'ACK'} made up by the restore "
                               f"left it in state {now}, not {want}",
                               hint="a firewall rule may drop it (the restore marks it "
                                    f"0x{netlock.REPAIR_MARK:08x})")
        time.sleep(0.001)


def reset_closed(sk: socket.socket, family: int) -> str | None:
    """A new socket made a connection that a reset ended (``--tcp-close``): the first read or write gives
    ECONNRESET, then reads give EOF and writes EPIPE, as the kernel has it for a connection its peer reset.

    In repair mode the socket is connected, with no packet, from the loopback address to itself (a 4-tuple
    no other socket has), then sent a RST in its own name.  It is bound to the unspecified address, which
    leaves IPV6_V6ONLY as it was; the port goes back when the RST closes it.  Returns why it could not be
    done (the socket then stays new and unconnected: reads give ENOTCONN), or None.
    """
    host, anyhost = ("::1", "::") if family == socket.AF_INET6 else ("127.0.0.1", "0.0.0.0")
    try:
        reuse = sk.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)  # repair mode's end clears it
        tr.set_repair(sk, tr.TCP_REPAIR_ON)
        try:
            sk.bind((anyhost, 0))
            port = sk.getsockname()[1]
            sk.connect((host, port))
            seq = _rcv_nxt(sk)
            send_segment(family, (host, port), (host, port), seq, 0, TCP_RST, 0, netlock.REPAIR_MARK)
            end = time.monotonic() + _SETTLE
            while _state(sk) != _CLOSE:
                if time.monotonic() > end:
                    return "the reset made up by the restore did not reach it"
                time.sleep(0.001)
        finally:
            tr.set_repair(sk, tr.TCP_REPAIR_OFF_NO_WP)
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
    except OSError as exc:
        return f"{exc.strerror or exc} (it needs the loopback address {host} and CAP_NET_RAW)"
    return None


def _rcv_nxt(sk: socket.socket) -> int:
    tr.select_queue(sk, tr.TCP_RECV_QUEUE)
    try:
        return tr.queue_seq(sk)
    finally:
        tr.select_queue(sk, tr.TCP_NO_QUEUE)


def shut_after(sk: socket.socket, fin_queued: bool, shut_rd: bool) -> None:
    """Repair mode left and the unsent data written: the FIN the program asked for and the kernel had not sent
    yet, and a SHUT_RD."""
    if fin_queued:
        sk.shutdown(socket.SHUT_WR)
    if shut_rd:
        sk.shutdown(socket.SHUT_RD)
