"""The receiver's front door (ckpt.migrate.dest._Door) over loopback TCP, with real channels.

Strangers are authenticated each on a thread of their own with a deadline, at
most ``max_pending`` at once (one more closes the oldest), and one
authenticated source at a time is handed over.  Time bounds here only guard
against hangs.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.migrate import wire
from ckpt.migrate.dest import _Door
from ckpt.migrate.wire import Channel, PeerError, generate_token

TOKEN = generate_token()
GUARD = 30.0  # seconds: a hang guard, never a measurement


class _Front:
    """A door on 127.0.0.1 and what it said."""

    def __init__(self, **kw: object) -> None:
        self.listener = wire.listen("127.0.0.1", 0)
        self.port = self.listener.getsockname()[1]
        self.said: list[str] = []
        self._lock = threading.Lock()
        self.door = _Door(self.listener, TOKEN, self._say, **kw)  # type: ignore[arg-type]

    def _say(self, msg: str) -> None:
        with self._lock:
            self.said.append(msg)

    def connect(self, first: bytes = b"", *, source: str = "127.0.0.1") -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=GUARD, source_address=(source, 0))
        if first:
            s.sendall(first)
        return s

    def source(self) -> Channel:
        """A source, authenticated, that said "migrate" (its first message)."""
        ch = Channel.connect("127.0.0.1", self.port, TOKEN, timeout=GUARD)
        ch.send({"type": "migrate", "pid": 1})
        return ch

    def handed_over(self) -> Channel:
        ch, hello = self.door._sources.get(timeout=GUARD)
        assert hello["type"] == "migrate"
        return ch

    def wait_said(self, text: str) -> None:
        deadline = time.monotonic() + GUARD
        while not any(text in m for m in self.said):
            assert time.monotonic() < deadline, self.said
            time.sleep(0.01)


@pytest.fixture
def door() -> Iterator[_Front]:
    d = _Front()
    yield d
    d.door.close()


def _hello(s: socket.socket) -> None:
    """Read the door's hello frame (it speaks first)."""
    (n,) = struct.unpack(">I", _read(s, 4))
    _read(s, n)


def _read(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "closed"
        data += chunk
    return data


def _closed(s: socket.socket) -> bool:
    """Read until the door closes ``s`` (True), or the guard runs out (False)."""
    s.settimeout(GUARD)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _open(s: socket.socket) -> bool:
    """Nothing more to read (after the hello) and no end: the door still waits on ``s``."""
    return not select.select([s], [], [], 0)[0]


def test_strangers_do_not_hold_up_a_source(door: _Front) -> None:
    half = door.connect(struct.pack(">I", 100) + b"\x81\xa4type")  # half a frame, then silence
    idle = door.connect()
    http = door.connect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with half, idle, http:
        src = door.source()
        with src, door.handed_over() as ch:
            src.send({"type": "image"})
            assert ch.recv()["type"] == "image"
            assert ch.timeout == wire.DEFAULT_TIMEOUT  # not the handshake's short deadline
        assert _closed(http)
        door.wait_said("did not answer with a ckpt handshake")


def test_the_handshake_has_a_deadline() -> None:
    d = _Front(handshake_timeout=0.2)
    try:
        with d.connect() as idle:
            assert _closed(idle)
        d.wait_said("within 0.2 s")
    finally:
        d.door.close()


def test_beyond_the_cap_the_oldest_connection_goes() -> None:
    d = _Front(max_pending=2)
    try:
        a, b, c = d.connect(), d.connect(), d.connect()
        with a, b, c:
            assert _closed(a)
            d.wait_said("2 connections were waiting to authenticate")
            for s in (b, c):
                _hello(s)
                assert _open(s)
            with d.source(), d.handed_over():  # the cap still lets a source through (b goes)
                assert _closed(b)
    finally:
        d.door.close()


def test_a_flood_from_one_address_does_not_push_out_another() -> None:
    d = _Front(max_pending=3)
    try:
        other = d.connect(source="127.0.0.2")  # the oldest of all, alone from its address
        flood = [d.connect() for _ in range(4)]
        with other:
            assert _closed(flood[0]) and _closed(flood[1])
            _hello(other)
            assert _open(other)
    finally:
        for s in flood:
            s.close()
        d.door.close()


def test_one_migration_at_a_time(door: _Front) -> None:
    first = door.source()
    with first, door.handed_over():
        with door.source() as second, pytest.raises(PeerError, match="another migration is in progress"):
            second.recv()
        door.wait_said("another one is in progress")
        door.door.done()
        with door.source(), door.handed_over():  # the next one comes in once the first is done
            pass


def test_close_cuts_handshakes_and_frees_the_port(door: _Front) -> None:
    with door.connect() as idle:
        _hello(idle)
        door.door.close()
        assert _closed(idle)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", door.port), timeout=GUARD)
    assert not any("refused a connection" in m for m in door.said)  # cut quietly


def test_outcome_queries_are_answered_from_the_journal_even_during_a_migration(tmp_path: Path) -> None:
    """``migrate --recover`` gets its answer while another migration holds the receiver."""
    from ckpt.migrate import journal

    done = journal.Journal(journal.new_migration_id(), 1, str(tmp_path / "gone-store"))
    done.set(str(tmp_path), "running")
    d = _Front(root=str(tmp_path))
    try:
        with d.source(), d.handed_over():  # a migration runs
            for migration, state in [(done.migration, "running"), (journal.new_migration_id(), "unknown"),
                                     ("../../etc/passwd", "unknown")]:
                with Channel.connect("127.0.0.1", d.port, TOKEN, timeout=GUARD) as ch:
                    ch.send({"type": "outcome", "migration": migration})
                    assert ch.expect("outcome")["state"] == state
        d.wait_said(f"what became of migration {done.migration}: running")
    finally:
        d.door.close()


def test_a_source_that_does_not_say_migrate_is_refused_at_the_door(door: _Front) -> None:
    """Refused before the serving thread sees it: a --once receiver, no longer listening, would wait for ever."""
    with Channel.connect("127.0.0.1", door.port, TOKEN, timeout=GUARD) as ch:
        ch.send({"type": "image"})
        with pytest.raises(PeerError, match="expected 'migrate'"):
            ch.recv()
    assert door.door._sources.empty()
    with door.source(), door.handed_over():  # the next real source comes in
        pass
