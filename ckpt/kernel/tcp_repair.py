"""TCP repair mode (``include/uapi/linux/tcp.h``): the socket options that read and write a connection's state.

``setsockopt(TCP_REPAIR, 1)`` (CAP_NET_ADMIN) puts a socket in repair mode:
it sends nothing on its own account any more (no SYN on ``connect``, no
FIN/RST on ``close``), its queues can be read with ``MSG_PEEK`` and filled
with ``send`` (whichever :data:`TCP_REPAIR_QUEUE` selects), and its
sequence numbers, window and negotiated options can be read and set.  It also
sets ``sk_reuse = SK_FORCE_REUSE`` (bind ignores other sockets on the port);
``TCP_REPAIR_OFF`` sets ``SK_NO_REUSE`` — whatever SO_REUSEADDR was — and
sends a window probe.

Facts measured on this kernel (6.18), which these wrappers leave to the caller:

* ``MSG_PEEK`` of the send queue copies at most the buffer given but returns
  the length of the *whole* queue (unacknowledged + unsent): :func:`peek`
  reports both, so a short buffer is seen, never taken for the data.
* ``MSG_PEEK`` of the receive queue returns the whole queue in one call when
  the buffer is big enough (out-of-order segments are not part of it).
* TCP_QUEUE_SEQ and TCP_TIMESTAMP are u32: they are passed as 4 packed
  bytes (a Python int above 2**31 does not fit setsockopt's C int).

Only bindings here: which queue to read when, and what to do with the
result, is :mod:`ckpt.resources.tcp`'s.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TCP_REPAIR", "TCP_REPAIR_QUEUE", "TCP_QUEUE_SEQ", "TCP_REPAIR_OPTIONS", "TCP_TIMESTAMP", "TCP_REPAIR_WINDOW",
    "TCP_REPAIR_ON", "TCP_REPAIR_OFF", "TCP_REPAIR_OFF_NO_WP", "TCP_NO_QUEUE", "TCP_RECV_QUEUE", "TCP_SEND_QUEUE",
    "TCPOPT_MAXSEG", "TCPOPT_WINDOW", "TCPOPT_SACK_PERM", "TCPOPT_TIMESTAMP", "TCPI_OPT_TIMESTAMPS",
    "TCPI_OPT_SACK", "TCPI_OPT_WSCALE", "SIOCINQ", "SIOCOUTQ", "SIOCOUTQNSD", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE",
    "tcp_repair_window", "tcp_repair_opt", "TcpInfoOptions", "set_repair", "select_queue", "queue_seq",
    "set_queue_seq", "window", "set_window", "set_options", "timestamp", "set_timestamp", "maxseg",
    "info_options", "inq", "outq", "outq_notsent", "peek",
]

# setsockopt/getsockopt names at SOL_TCP
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29

# TCP_REPAIR values
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1  # off without the window probe

# TCP_REPAIR_QUEUE values
TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2

# struct tcp_repair_opt codes (TCP option kinds)
TCPOPT_MAXSEG = 2
TCPOPT_WINDOW = 3      # opt_val: snd_wscale | rcv_wscale << 16
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8

# tcp_info.tcpi_options bits
TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4

# ioctls on a TCP socket (linux/sockios.h, asm-generic/ioctls.h)
SIOCINQ = 0x541B       # FIONREAD: bytes in the receive queue not yet read
SIOCOUTQ = 0x5411      # TIOCOUTQ: bytes in the send queue not yet acknowledged (sent or not)
SIOCOUTQNSD = 0x894B   # bytes in the send queue not yet sent

# SOL_SOCKET: set a buffer size above net.core.[rw]mem_max (CAP_NET_ADMIN); the kernel doubles the value
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

_U32 = struct.Struct("<I")
_INT = struct.Struct("<i")


class tcp_repair_window(ctypes.Structure):
    _fields_ = [("snd_wl1", ctypes.c_uint32), ("snd_wnd", ctypes.c_uint32), ("max_window", ctypes.c_uint32),
                ("rcv_wnd", ctypes.c_uint32), ("rcv_wup", ctypes.c_uint32)]


class tcp_repair_opt(ctypes.Structure):
    _fields_ = [("opt_code", ctypes.c_uint32), ("opt_val", ctypes.c_uint32)]


@dataclass(frozen=True)
class TcpInfoOptions:
    """The head of ``struct tcp_info``: state and what the handshake negotiated."""

    state: int          # TCP_* (include/net/tcp_states.h)
    options: int        # TCPI_OPT_* bits
    snd_wscale: int
    rcv_wscale: int


def set_repair(sock: socket.socket, value: int) -> None:
    """TCP_REPAIR: :data:`TCP_REPAIR_ON`, :data:`TCP_REPAIR_OFF` or :data:`TCP_REPAIR_OFF_NO_WP`."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, _INT.pack(value))


def select_queue(sock: socket.socket, queue: int) -> None:
    """TCP_REPAIR_QUEUE: which queue later peeks, sends and TCP_QUEUE_SEQ act on (repair mode)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, _INT.pack(queue))


def queue_seq(sock: socket.socket) -> int:
    """TCP_QUEUE_SEQ of the selected queue: rcv_nxt (receive) or write_seq (send)."""
    return _U32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]


def set_queue_seq(sock: socket.socket, seq: int) -> None:
    """TCP_QUEUE_SEQ of the selected queue, before ``connect`` (state CLOSE)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, _U32.pack(seq & 0xFFFFFFFF))


def window(sock: socket.socket) -> tcp_repair_window:
    """TCP_REPAIR_WINDOW (repair mode)."""
    return tcp_repair_window.from_buffer_copy(
        sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, ctypes.sizeof(tcp_repair_window)))


def set_window(sock: socket.socket, w: tcp_repair_window) -> None:
    """TCP_REPAIR_WINDOW: checked against rcv_nxt, so set once the receive queue is back."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, bytes(w))


def set_options(sock: socket.socket, opts: Sequence[tuple[int, int]]) -> None:
    """TCP_REPAIR_OPTIONS: (TCPOPT_* code, value) pairs; only once connected and before any data is queued."""
    arr = (tcp_repair_opt * len(opts))(*(tcp_repair_opt(c, v) for c, v in opts))
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS, bytes(arr))


def timestamp(sock: socket.socket) -> int:
    """TCP_TIMESTAMP: the connection's current TSval clock (the kernel's clock plus its offset)."""
    return _U32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, 4))[0]


def set_timestamp(sock: socket.socket, ts: int) -> None:
    """TCP_TIMESTAMP (repair mode): sets the offset so the TSval clock continues from ``ts``."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, _U32.pack(ts & 0xFFFFFFFF))


def maxseg(sock: socket.socket) -> int:
    """TCP_MAXSEG; in repair mode it is the MSS clamp (what TCP_REPAIR_OPTIONS' TCPOPT_MAXSEG sets)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


def info_options(sock: socket.socket) -> TcpInfoOptions:
    """State, tcpi_options and the window scales (tcpi_snd_wscale:4, tcpi_rcv_wscale:4) from TCP_INFO."""
    head = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return TcpInfoOptions(head[0], head[5], head[6] & 0xF, head[6] >> 4)


def _ioctl_int(sock: socket.socket, req: int) -> int:
    return _INT.unpack(fcntl.ioctl(sock.fileno(), req, bytes(4)))[0]


def inq(sock: socket.socket) -> int:
    """SIOCINQ: bytes received and not yet read."""
    return _ioctl_int(sock, SIOCINQ)


def outq(sock: socket.socket) -> int:
    """SIOCOUTQ: bytes in the send queue not yet acknowledged (write_seq - snd_una)."""
    return _ioctl_int(sock, SIOCOUTQ)


def outq_notsent(sock: socket.socket) -> int:
    """SIOCOUTQNSD: bytes in the send queue never sent (write_seq - snd_nxt)."""
    return _ioctl_int(sock, SIOCOUTQNSD)


def peek(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """``recv(MSG_PEEK | MSG_DONTWAIT)`` of the selected queue: (bytes copied, length the kernel returned).

    For the send queue the returned length is the whole queue's even when it
    is more than ``size`` (only ``size`` bytes are copied then).
    """
    buf = bytearray(size)
    n = sock.recv_into(buf, size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    return bytes(buf[:min(n, size)]), n
