"""A migration within one network namespace hands its bound sockets over instead of binding them again.

When ``ckpt receive`` runs in the network namespace of the process it
receives (a restart on the same host, a receiver in another PID namespace),
the source still holds every address and port the process is bound to while
the copy is built: binding them again fails ("Address already in use").  So
the socket objects themselves go over: the source's final dump marks each
bound TCP or UDP socket that is not a connection (``InetSocket.handed_over``),
takes a duplicate of each from the frozen original (``pidfd_getfd``) and
passes them with SCM_RIGHTS over a unix socket in the abstract namespace,
which the receiver opened for this migration and named, with a nonce, in its
``ready`` (over the authenticated, encrypted channel).  The restore installs
them as they are: a listener keeps the connections waiting in it, even those
that arrived during the switch-over.  Nothing has to be taken back on a
rollback — the original keeps its own descriptors, and the killed copy's
references just go.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import time

from ..errors import CkptError
from ..resources.tcp import netns_id

__all__ = ["HandoverPort", "offer", "send", "sockets_of"]

#: The most sockets one migration hands over (one message; SCM_RIGHTS takes up to 253 descriptors).
MAX_SOCKETS = 250
_ID = struct.Struct("<I")


class HandoverPort:
    """The receiver's end: an abstract unix socket that takes the sockets of exactly one migration."""

    def __init__(self) -> None:
        self.name = f"ckpt-handover-{secrets.token_hex(12)}"
        self.nonce = secrets.token_bytes(16)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.bind("\0" + self.name)
        self._sock.listen(1)

    def offer(self) -> dict:
        """What ``ready`` tells the source."""
        return {"socket": self.name, "nonce": self.nonce.hex()}

    def receive(self, ids: list[int], timeout: float) -> dict[int, int]:
        """The sockets the source sent, as file id → our descriptor (the caller closes them).

        Anyone in the network namespace can connect to the port: a connection
        without the nonce is dropped and the next one awaited, until ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                raise CkptError(f"the source did not hand its {len(ids)} bound socket(s) over within "
                                f"{timeout:.0f} s") from None
            with conn:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    data, fds, _flags, _addr = socket.recv_fds(conn, 16 + _ID.size * MAX_SOCKETS, MAX_SOCKETS)
                except OSError:
                    continue
            if data[:16] != self.nonce:
                for fd in fds:
                    os.close(fd)
                continue  # not the source
            got = [_ID.unpack_from(data, 16 + i * _ID.size)[0] for i in range((len(data) - 16) // _ID.size)]
            if got != list(ids) or len(fds) != len(ids):
                for fd in fds:
                    os.close(fd)
                raise CkptError("the sockets handed over are not the ones the source announced")
            return dict(zip(ids, fds, strict=True))

    def close(self) -> None:
        self._sock.close()


def offer(hello: dict) -> HandoverPort | None:
    """A port for the migration ``hello`` announces when it comes from this network namespace (else None)."""
    if hello.get("dry_run") or hello.get("netns") != netns_id(os.getpid()):  # (names the boot too)
        return None
    return HandoverPort()


def sockets_of(image_dir: str) -> list[tuple[int, int, int]]:
    """(file id, pid, fd) of each socket the final image marks as handed over, through its first holder."""
    from ..image import Image

    image = Image.open(image_dir)
    handed = {e.id for e in image.file_entries() if e.inet.handed_over}
    out: dict[int, tuple[int, int, int]] = {}
    for p in image.processes:
        if p.zombie:
            continue
        for f in image.fds(p.pid):
            if f.file_id in handed and f.file_id not in out:
                out[f.file_id] = (f.file_id, p.pid, f.fd)
    if len(out) > MAX_SOCKETS:
        raise CkptError(f"the process holds {len(out)} bound sockets; a migration hands over {MAX_SOCKETS} at most")
    return sorted(out.values())


def send(port: dict, handed: list[tuple[int, int, int]]) -> None:
    """Pass duplicates of the frozen original's sockets to the receiver's port (``ready``'s ``handover``)."""
    from ..kernel.pidfd import dup_from

    fds: list[int] = []
    try:
        for _file_id, pid, fd in handed:
            fds.append(dup_from(pid, fd))
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as s:
            s.connect("\0" + str(port["socket"]))
            payload = bytes.fromhex(str(port["nonce"])) + b"".join(_ID.pack(i) for i, _, _ in handed)
            socket.send_fds(s, [payload], fds)
    except OSError as exc:
        raise CkptError(f"handing the process's bound sockets to the receiver failed: {exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)
