"""The destination side of live migration: store the chain, restore when told, report back.

``ckpt receive`` accepts a connection, authenticates the peer (the wire's
handshake), and keeps the images of one migration as a numbered store
``DIR/<pid>-<time>/1, 2, …`` (the same layout ``--incremental`` uses, so
the parent links the source wrote resolve here).  On "restore" it restores
the newest image detached and answers "running" with the pid.  Until it has
answered, any failure — the link, an "abort" from the source, its own restore
— removes what it created (the restore itself kills a half-built process)
and leaves the source to run on.  Once it has answered, the restored
process is the live one and stays, whatever happens to the link.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..errors import CkptError
from .wire import Channel, WireError, listen

__all__ = ["ReceiveResult", "receive_one", "serve"]

#: A source silent for this long between two messages is taken as gone.
IDLE_TIMEOUT = 120.0


@dataclass
class ReceiveResult:
    """One migration as the destination saw it."""

    peer: str
    source_pid: int = 0
    pid: int = 0               # the restored process (0: none)
    images: int = 0
    bytes_received: int = 0
    restore_ms: float = 0.0
    outcome: str = ""          # "running", "aborted: …", "failed: …", "dry run"
    store: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def receive_one(listener: socket.socket, root: str, token: bytes, *, last: bool = False,
                on_event: Callable[[str], None] | None = None) -> ReceiveResult:
    """Serve one migration on an already listening socket; see the module docstring.

    ``last``: close the listener once the connection is accepted, so the
    restored process can bind the same address and port (a server migrated
    to the receiver's own port).
    """
    from .. import api

    say = on_event or (lambda _msg: None)
    conn, addr = listener.accept()
    if last:
        listener.close()
    result = ReceiveResult(peer=f"{addr[0]}:{addr[1]}")
    store = ""
    confirmed = False
    try:
        with Channel.accept(conn, token) as ch:
            hello = ch.expect("migrate", timeout=IDLE_TIMEOUT)
            result.source_pid = int(hello["pid"])
            store = os.path.join(root, f"{result.source_pid}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.makedirs(store, mode=0o700)
            result.store = store
            import ckpt.restore  # noqa: F401 - imported now, not inside the downtime (~80 ms)

            ch.send({"type": "ready"})
            say(f"migration of pid {result.source_pid} from {result.peer} into {store}")
            while True:
                msg = ch.recv(timeout=IDLE_TIMEOUT)
                kind = msg.get("type")
                if kind == "image":
                    name = ch.recv_dir(store)
                    result.images += 1
                    ch.send({"type": "stored", "name": os.path.basename(name)})
                elif kind == "restore":
                    image = os.path.join(store, str(msg["name"]))
                    t0 = time.monotonic()
                    try:
                        r = api.restore(image, detached=True)
                    except CkptError as exc:
                        ch.send_error(f"restore failed at the destination: {exc}")
                        raise
                    result.restore_ms = round((time.monotonic() - t0) * 1e3, 1)
                    result.pid = r.pid
                    ch.send({"type": "running", "pid": r.pid, "restore_ms": result.restore_ms})
                    confirmed = True
                    say(f"restored as pid {r.pid} in {result.restore_ms:.0f} ms")
                    try:
                        ch.expect("done", timeout=IDLE_TIMEOUT)
                    except WireError:
                        pass  # ours is the live copy now: the source's fate is its own business
                    result.outcome = "running"
                    break
                elif kind == "abort":
                    result.outcome = "dry run" if msg.get("reason") == "dry run" else f"aborted: {msg.get('reason', '')}"
                    break
                else:
                    raise WireError(f"unexpected message {kind!r} from the source")
            result.bytes_received = ch.bytes_received
    except BaseException as exc:
        if not result.outcome:
            result.outcome = f"failed: {exc}"
        if not confirmed:
            _clean(store)
            result.store = ""
        if isinstance(exc, (CkptError, OSError)):
            say(f"migration from {result.peer} failed: {exc}")
            return result
        raise
    if not confirmed:
        _clean(store)
        result.store = ""
    say(f"migration from {result.peer}: {result.outcome}")
    return result


def _clean(store: str) -> None:
    if store:
        shutil.rmtree(store, ignore_errors=True)


def serve(host: str, port: int, root: str, token: bytes, *, once: bool = False,
          on_event: Callable[[str], None] | None = None,
          on_listening: Callable[[tuple[str, int]], None] | None = None) -> list[ReceiveResult]:
    """Accept migrations on ``host:port`` into ``root``: one with ``once``, else until interrupted."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    results: list[ReceiveResult] = []
    with listen(host, port) as s:
        if on_listening is not None:
            on_listening(s.getsockname()[:2])
        while True:
            results.append(receive_one(s, root, token, last=once, on_event=on_event))
            if once:
                return results
