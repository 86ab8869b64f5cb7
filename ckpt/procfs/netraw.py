"""Raw sockets as ``/proc/PID/net/raw`` and ``raw6`` print them: the peer a raw socket is connected to.

getpeername cannot tell it (a raw socket has no destination port, and inet_getname answers ENOTCONN for
a port of 0), and raw_diag, which sock_diag would ask, is a kernel option often left out
(CONFIG_INET_RAW_DIAG).  ``raw_sock_seq_show`` / ``ip6_dgram_sock_seq_show`` print one line a socket::

    sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
     1: 0100007F:00FD 0100007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 12345 2 ffff... 0

Addresses are the ``__be32`` words as the CPU reads them, in hex (%08X: on x86_64 the bytes of each word
reversed); the "port" is the protocol locally and 0 remotely; ``st`` is 1 (TCP_ESTABLISHED) once
connected.  The file lists the sockets of PID's network namespace.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from ._proc import ProcDir

__all__ = ["RawLine", "raw_socket"]


@dataclass(frozen=True)
class RawLine:
    """One raw socket: its remote address (4 or 16 bytes, network order) and state (1: connected)."""

    inode: int
    remote: bytes
    state: int


def _address(text: str) -> bytes:
    """An address as the kernel printed it (%08X per __be32 word, read in the CPU's order) in network order."""
    return b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))


def raw_socket(pid: int, family: int, inode: int) -> RawLine | None:
    """The raw socket of ``inode`` in ``pid``'s network namespace, or None when its file does not list it."""
    name = "net/raw" if family == socket.AF_INET else "net/raw6"
    with ProcDir(pid) as proc:
        text = proc.read(name).decode(errors="replace")
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[9] == str(inode):
            return RawLine(inode, _address(fields[2].partition(":")[0]), int(fields[3], 16))
    return None
