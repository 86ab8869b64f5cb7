"""The wire of live migration (ckpt/migrate/wire.py): framing, handshake, frame tags, directory transfer.

Everything runs over real sockets (socketpairs, or loopback TCP), the peer in a thread.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

import ckpt

from ckpt.errors import CkptError, ImageError, UsageError
from ckpt.migrate import wire
from ckpt.migrate.wire import (
    AuthError,
    Channel,
    PeerError,
    Role,
    WireError,
    WireTimeout,
    generate_token,
    load_token,
    save_token,
)

TOKEN = generate_token()
T = 5.0  # generous: nothing here should come near it


def _both(client: Callable[[], Any], server: Callable[[], Any]) -> tuple[Any, Any]:
    """Run ``server`` in a thread and ``client`` here; each result is a value or the exception raised."""

    def run(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            return exc

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(run, server)
        c = run(client)
        return c, fut.result(timeout=T)


def _pair(
    sockets: tuple[socket.socket, socket.socket] | None = None,
    *,
    client_token: str = TOKEN,
    server_token: str = TOKEN,
    client_cls: type[Channel] = Channel,
    server_cls: type[Channel] = Channel,
) -> tuple[Any, Any]:
    a, b = sockets or socket.socketpair()
    return _both(
        lambda: client_cls(a, client_token, Role.CLIENT, timeout=T),
        lambda: server_cls(b, server_token, Role.SERVER, timeout=T),
    )


@pytest.fixture
def chans() -> Iterator[tuple[Channel, Channel]]:
    client, server = _pair()
    assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
    yield client, server
    client.close()
    server.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


Mangle = Callable[[str, int, bytes], list[bytes]]


class Relay:
    """A man in the middle, frame by frame: ``mangle(direction, index, frame)`` returns what to forward.

    Directions are "c2s" and "s2c"; frames are numbered per direction from 0 (the hello).
    """

    def __init__(self, mangle: Mangle = lambda d, i, f: [f]) -> None:
        self.client_end, c_inner = socket.socketpair()
        self.server_end, s_inner = socket.socketpair()
        self._inner = (c_inner, s_inner)
        self.seen = bytearray()
        self._mangle = mangle
        self._threads = [
            threading.Thread(target=self._pump, args=(c_inner, s_inner, "c2s"), daemon=True),
            threading.Thread(target=self._pump, args=(s_inner, c_inner, "s2c"), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        index = 0
        try:
            while (header := _recv_exact(src, 4)) is not None:
                body = _recv_exact(src, struct.unpack(">I", header)[0])
                if body is None:
                    break
                self.seen += header + body
                for out in self._mangle(direction, index, header + body):
                    dst.sendall(out)
                index += 1
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        for s in self._inner:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(T)
        for s in self._inner:
            s.close()


def _frame(msg: dict[str, Any], tag: bytes = b"") -> bytes:
    body: bytes = msgpack.packb(msg) + tag
    return struct.pack(">I", len(body)) + body


# -- handshake -------------------------------------------------------------------


def test_handshake_and_messages_over_loopback_tcp() -> None:
    with wire.listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        client, server = _both(
            lambda: Channel.connect("127.0.0.1", port, TOKEN, timeout=T),
            lambda: Channel.accept(listener, TOKEN, timeout=T, io_timeout=T),
        )
    with client, server:
        assert client.peer == f"127.0.0.1:{port}" and server.peer.startswith("127.0.0.1:")
        client.send({"type": "ping", "n": 1, "blob": b"\x00\xff" * 1000, "nested": {"a": [1, "b"]}})
        assert server.recv() == {"type": "ping", "n": 1, "blob": b"\x00\xff" * 1000, "nested": {"a": [1, "b"]}}
        server.send({"type": "pong"})
        assert client.expect("pong") == {"type": "pong"}
        assert client.bytes_sent == server.bytes_received > 2000
        assert server.bytes_sent == client.bytes_received > 0
    assert client.closed and server.closed


def test_accept_also_takes_an_accepted_connection() -> None:
    a, b = socket.socketpair()
    client, server = _both(lambda: Channel(a, TOKEN, Role.CLIENT, timeout=T), lambda: Channel.accept(b, TOKEN))
    with client, server:
        server.send({"type": "hi"})
        assert client.recv()["type"] == "hi"
        assert server.who == "the peer"


def test_wrong_token_is_refused_on_both_sides_and_never_sent() -> None:
    relay = Relay()
    try:
        client, server = _pair((relay.client_end, relay.server_end), server_token=generate_token())
    finally:
        relay.close()
    assert isinstance(client, AuthError) and isinstance(server, AuthError), (client, server)
    assert "refused our authentication (wrong token?)" in str(client)
    assert "failed authentication (wrong token?)" in str(server)
    assert client.hint and "same token" in client.hint
    assert TOKEN.encode() not in relay.seen and bytes.fromhex(TOKEN) not in relay.seen


def test_a_short_token_is_refused_before_any_traffic() -> None:
    with pytest.raises(UsageError, match="too short"):
        Channel.connect("127.0.0.1", 9, "secret", timeout=T)  # nothing listens on 9: the token is checked first


class _Speaks1to2(Channel):
    """ckpt 0.2.x: protocols 1 and 2, whose frames carried memory in clear."""

    _protocol_versions = (1, 2)


class _Release010(Channel):
    """ckpt 0.1.0 as it was: a hello with ``version`` 1 and no range, and it wanted exactly 1."""

    _protocol_versions = (1, 1)

    def _hello(self) -> dict[str, Any]:
        hello = super()._hello()
        del hello["max_version"]
        hello["software"] = "0.1.0"
        return hello


class _Speaks4to5(Channel):
    _protocol_versions = (4, 5)


def test_both_sides_use_the_newest_version_they_both_speak(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    assert client.version == server.version == wire.PROTOCOL_VERSION == 3
    assert client.peer_software == server.peer_software == ckpt.__version__


@pytest.mark.parametrize("older", [_Speaks1to2, _Release010])
@pytest.mark.parametrize("older_side", ["client", "server"])
def test_a_peer_that_sends_memory_in_clear_is_refused(older: type[Channel], older_side: str) -> None:
    """Protocols 1 and 2 only tagged their frames: a ckpt that speaks no newer one is refused, before the proofs."""
    client, server = _pair(client_cls=older if older_side == "client" else Channel,
                           server_cls=older if older_side == "server" else Channel)
    ours = client if older_side == "server" else server
    assert isinstance(ours, WireError) and not isinstance(ours, AuthError), ours
    assert "this ckpt" in str(ours) and "speaks version 3" in str(ours), ours
    assert ours.hint and "no longer speaks the protocols that sent memory in clear" in ours.hint
    theirs = server if older_side == "server" else client
    assert isinstance(theirs, WireError), theirs


@pytest.mark.parametrize("newer", ["client", "server"])
def test_versions_that_do_not_meet_are_refused_on_both_sides_naming_both(newer: str) -> None:
    client, server = _pair(
        client_cls=_Speaks4to5 if newer == "client" else Channel,
        server_cls=_Speaks4to5 if newer == "server" else Channel,
    )
    for exc, is_newer in ((client, newer == "client"), (server, newer == "server")):
        assert isinstance(exc, WireError) and not isinstance(exc, AuthError), exc
        theirs, ours = ("version 3", "versions 4-5") if is_newer else ("versions 4-5", "version 3")
        assert f"speaks migration protocol {theirs} (ckpt {ckpt.__version__}), " \
               f"this ckpt {ckpt.__version__} speaks {ours}" in str(exc)
        assert "\n" not in str(exc) and exc.hint and "upgrade the older side" in exc.hint


def test_a_release_0_1_0_peer_is_refused_naming_its_version() -> None:
    client, server = _pair(client_cls=_Release010, server_cls=Channel)
    assert isinstance(server, WireError) and "protocol version 1 (ckpt 0.1.0)" in str(server), server
    assert isinstance(client, WireError), client


@pytest.mark.parametrize("hello", [{"version": "2"}, {"version": True}, {"version": 2, "max_version": 1},
                                   {"max_version": 2}, {"version": 1 << 20}])
def test_a_malformed_version_range_is_refused(hello: dict[str, Any]) -> None:
    class Odd(Channel):
        def _hello(self) -> dict[str, Any]:
            mine = super()._hello()
            del mine["version"], mine["max_version"]
            return {**mine, **hello}

    client, server = _pair(client_cls=Odd)
    assert isinstance(server, WireError) and "malformed hello" in str(server), server


def test_the_test_aid_narrows_this_side_to_one_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wire.PROTOCOL_ENV, "3")
    client, server = _pair()
    assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
    with client, server:
        assert client.version == server.version == 3
    monkeypatch.setenv(wire.PROTOCOL_ENV, "2")
    client, server = _pair()
    assert isinstance(client, UsageError) and "this ckpt speaks version 3" in str(client), client


def test_two_clients_are_refused() -> None:
    a, b = socket.socketpair()
    one, two = _both(lambda: Channel(a, TOKEN, Role.CLIENT, timeout=T), lambda: Channel(b, TOKEN, Role.CLIENT, timeout=T))
    assert isinstance(one, WireError) and "two sources or two destinations" in str(one)
    assert isinstance(two, WireError)


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", _frame({"x": 1})])
def test_a_stranger_is_told_apart_from_a_ckpt_peer(junk: bytes) -> None:
    a, b = socket.socketpair()
    with a:
        a.sendall(junk)
        with pytest.raises(WireError, match="ckpt") as err:
            Channel(b, TOKEN, Role.SERVER, timeout=T)
    assert "\n" not in str(err.value)


def test_a_silent_peer_times_out_the_handshake() -> None:
    a, b = socket.socketpair()
    with b, pytest.raises(WireTimeout, match="within 0.1 s"):
        Channel(a, TOKEN, Role.CLIENT, timeout=0.1)


def test_accept_times_out_without_a_connection() -> None:
    with wire.listen("127.0.0.1", 0) as listener, pytest.raises(WireTimeout, match="no connection within 0.05 s"):
        Channel.accept(listener, TOKEN, timeout=0.05)


@pytest.mark.parametrize("host, port, text", [
    ("127.0.0.1", 99999, "the port must be 0-65535"),
    ("192.0.2.1", 0, "Cannot assign requested address"),  # TEST-NET-1: no address of this host
    ("busy", 0, "Address already in use"),
])
def test_an_address_that_cannot_be_listened_on_is_the_users_to_change(host: str, port: int, text: str) -> None:
    with wire.listen("127.0.0.1", 0) as other:
        if host == "busy":
            host, port = other.getsockname()
        with pytest.raises(UsageError, match=text) as err:
            wire.listen(host, port)
    assert "\n" not in str(err.value) and "while attempting" not in str(err.value)


def test_connection_refused_is_one_line_with_a_hint() -> None:
    with wire.listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(WireError, match="connection refused") as err:
        Channel.connect("127.0.0.1", port, TOKEN, timeout=T)
    assert err.value.hint and "ckpt receive" in err.value.hint


# -- frames after the handshake ---------------------------------------------------


def _flip(direction: str, index: int, frame: bytes) -> list[bytes]:
    if direction == "c2s" and index == 3:
        frame = frame[:10] + bytes([frame[10] ^ 0x01]) + frame[11:]
    return [frame]


def _replay(direction: str, index: int, frame: bytes) -> list[bytes]:
    return [frame, frame] if direction == "c2s" and index == 3 else [frame]


def _drop(direction: str, index: int, frame: bytes) -> list[bytes]:
    return [] if direction == "c2s" and index == 3 else [frame]


def _inject(direction: str, index: int, frame: bytes) -> list[bytes]:
    forged = _frame({"type": "data", "x": b"evil"}, tag=os.urandom(32))
    return [forged, frame] if direction == "c2s" and index == 3 else [frame]


@pytest.mark.parametrize("mangle", [_flip, _replay, _drop, _inject], ids=["flip", "replay", "drop", "inject"])
def test_a_man_in_the_middle_cannot_alter_the_stream(mangle: Mangle) -> None:
    relay = Relay(mangle)
    client, server = _pair((relay.client_end, relay.server_end))
    try:
        assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
        client.send({"type": "data", "x": b"first"})
        client.send({"type": "data", "x": b"second"})
        with pytest.raises(WireError, match="failed authentication"):
            for _ in range(2):
                assert server.recv()["type"] == "data"  # a replayed frame passes once, then fails
        assert server.broken is not None
        with pytest.raises(WireError, match="unusable after an earlier error"):
            server.recv()
        with pytest.raises(PeerError, match="failed authentication"):
            client.recv()  # the honest sender is told
    finally:
        client.close()
        server.close()
        relay.close()


def test_nothing_sent_after_the_proofs_is_readable_on_the_wire(tmp_path: Path) -> None:
    """What a listener on the network sees: no byte of a message, of a file's name or of its content."""
    secret = os.urandom(48)
    src = tmp_path / "img"
    src.mkdir()
    (src / "pages-1.img").write_bytes(secret * 4096)
    relay = Relay()
    client, server = _pair((relay.client_end, relay.server_end))
    try:
        assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
        client.send({"type": "data", "x": secret})
        assert server.recv()["x"] == secret
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(client.send_dir, src, "img")
            (tmp_path / "rx").mkdir()
            got = server.recv_dir(tmp_path / "rx")
            sent.result()
        assert Path(got, "pages-1.img").read_bytes() == secret * 4096
    finally:
        client.close()
        server.close()
        relay.close()
    stream = bytes(relay.seen)
    assert len(stream) > 4096
    for clear in (secret[:12], b"pages-1.img", b"chunk", b"dir_end"):
        assert clear not in stream, clear


def test_an_oversize_length_prefix_is_refused_without_allocating(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    os.write(client.fileno(), struct.pack(">I", 0xFFFF_FFF0))
    tracemalloc.start()
    try:
        with pytest.raises(WireError, match="over the limit"):
            server.recv()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_an_oversize_first_frame_is_refused_before_authentication() -> None:
    a, b = socket.socketpair()
    with a:
        a.sendall(struct.pack(">I", wire.MAX_HANDSHAKE_FRAME + 1))
        tracemalloc.start()
        try:
            with pytest.raises(WireError, match="is it a ckpt migration endpoint"):
                Channel(b, TOKEN, Role.SERVER, timeout=T)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 1 << 20


def test_peer_closing_mid_frame(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    os.write(client.fileno(), struct.pack(">I", 100) + b"x" * 10)
    client.close()
    with pytest.raises(WireError, match=r"connection closed by the peer in the middle of a frame \(14 of 104 bytes"):
        server.recv()


def test_peer_closing_between_frames(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    client.send({"type": "last"})
    client.close()
    assert server.recv()["type"] == "last"
    with pytest.raises(WireError, match="^connection closed by the peer$"):
        server.recv()


def test_a_timeout_between_frames_leaves_the_channel_usable(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    with pytest.raises(WireTimeout, match="no message from the peer within 0.05 s"):
        server.recv(timeout=0.05)
    with pytest.raises(WireTimeout):
        server.recv(timeout=0)
    assert server.broken is None
    client.send({"type": "late"})
    assert server.recv(timeout=T)["type"] == "late"


def test_a_timeout_mid_frame_breaks_the_channel(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    os.write(client.fileno(), struct.pack(">I", 100) + b"x" * 10)
    with pytest.raises(WireTimeout, match="stalled in the middle of a frame"):
        server.recv(timeout=0.05)
    assert server.broken is not None


def test_expect_names_what_came_instead_and_tells_the_peer(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    client.send({"type": "chunk"})
    with pytest.raises(WireError, match="expected a 'dir' message from the peer, got 'chunk'"):
        server.expect("dir")
    with pytest.raises(PeerError, match="protocol error: expected a 'dir' message, received 'chunk'"):
        client.recv()


def test_an_error_frame_carries_the_peers_reason(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    server.send_error("restore failed at the destination: no room\n\x1b[31mred")
    with pytest.raises(PeerError) as err:
        client.expect("running")
    assert err.value.peer_message == "restore failed at the destination: no room??[31mred"
    assert str(err.value) == f"the peer reported: {err.value.peer_message}"


def test_one_thread_may_send_while_another_receives(chans: tuple[Channel, Channel]) -> None:
    client, server = chans
    n = 64

    def stream() -> None:
        for i in range(n):
            client.send({"type": "chunk", "i": i, "data": bytes(256 << 10)})

    def ack() -> None:
        for i in range(n):
            assert server.recv()["i"] == i
            server.send({"type": "ack", "i": i})

    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(stream), pool.submit(ack)]
        acks = [client.expect("ack")["i"] for _ in range(n)]
        for job in jobs:
            job.result(timeout=T)
    assert acks == list(range(n))


def test_messages_must_have_a_type_and_fit_a_frame(chans: tuple[Channel, Channel]) -> None:
    client, _ = chans
    with pytest.raises(TypeError, match="'type'"):
        client.send({"kind": "x"})
    with pytest.raises(ValueError, match="exceeds the limit"):
        client.send({"type": "huge", "data": bytes(wire.MAX_FRAME)})
    assert client.broken is None


# -- directory transfer -----------------------------------------------------------


def _image(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _random(n: int) -> bytes:
    return os.urandom(n)


def _transfer(client: Channel, server: Channel, src: Path, root: Path, name: str, **kw: Any) -> tuple[Any, Any]:
    return _both(lambda: client.send_dir(src, name, **kw), lambda: server.recv_dir(root))


@pytest.mark.parametrize("compress_level", [None, 1])
def test_a_directory_round_trips_byte_for_byte(
    chans: tuple[Channel, Channel], tmp_path: Path, compress_level: int | None
) -> None:
    client, server = chans
    files = {
        "inventory.img": b"inventory" * 100,
        "empty.img": b"",
        "pages-1234.img": _random(10 << 20),
        "chunk-sized.img": _random(wire.CHUNK_SIZE),
        "zeros.img": bytes(3 * wire.CHUNK_SIZE + 5),
    }
    src = _image(tmp_path / "src", files)
    root = tmp_path / "root"
    root.mkdir()
    sent, final = _transfer(client, server, src, root, "3", compress_level=compress_level)
    assert final == str(root / "3"), final
    assert os.listdir(root) == ["3"]  # no temporary directory left
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o700
    assert sorted(os.listdir(final)) == sorted(files)
    for name, data in files.items():
        st = os.stat(os.path.join(final, name))
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == len(data)
        assert hashlib.sha256(Path(final, name).read_bytes()).digest() == hashlib.sha256(data).digest(), name
    total = sum(map(len, files.values()))
    assert (sent.name, sent.files, sent.size) == ("3", 5, total)
    assert server.bytes_received == client.bytes_sent
    if compress_level is None:
        assert sent.wire_bytes > total
    else:
        random_part = (10 << 20) + wire.CHUNK_SIZE  # goes raw; the rest compresses to almost nothing
        assert random_part < sent.wire_bytes < random_part + 16384
    client.send({"type": "after"})
    assert server.recv()["type"] == "after"  # the stream is still in step


def test_an_empty_directory_round_trips(chans: tuple[Channel, Channel], tmp_path: Path) -> None:
    client, server = chans
    sent, final = _transfer(client, server, _image(tmp_path / "src", {}), tmp_path, "e")
    assert sent.files == 0 and os.listdir(final) == []


def test_a_transfer_cut_midway_leaves_nothing_and_can_be_retried(tmp_path: Path) -> None:
    src = _image(tmp_path / "src", {"a.img": b"a" * 1000, "pages.img": _random(3 << 20)})
    root = tmp_path / "root"
    root.mkdir()
    client, server = _pair()

    def cut() -> None:  # the source dies after the first chunk of the big file
        client.send({"type": "dir", "name": "img", "files": [["a.img", 1000], ["pages.img", 3 << 20]]})
        client.send({"type": "chunk", "data": b"a" * 1000})
        client.send({"type": "chunk", "data": b"p" * (1 << 20)})
        client.close()

    _, err = _both(cut, lambda: server.recv_dir(root))
    server.close()
    assert isinstance(err, WireError) and "connection closed by the peer" in str(err), err
    assert os.listdir(root) == []

    client, server = _pair()
    with client, server:
        _, final = _transfer(client, server, src, root, "img")
    assert os.listdir(root) == ["img"] and Path(final, "pages.img").read_bytes() == (src / "pages.img").read_bytes()


def _bad_dir(name: Any = "img", files: Any = None) -> dict[str, Any]:
    return {"type": "dir", "name": name, "files": [["a", 1]] if files is None else files}


@pytest.mark.parametrize(
    ("msg", "complaint"),
    [
        (_bad_dir(".."), "bad directory name"),
        (_bad_dir("."), "bad directory name"),
        (_bad_dir(".hidden"), "bad directory name"),
        (_bad_dir("a/b"), "bad directory name"),
        (_bad_dir(""), "bad directory name"),
        (_bad_dir("x\n"), "bad directory name"),
        (_bad_dir("x" * 256), "bad directory name"),
        (_bad_dir(7), "'name' is int"),
        (_bad_dir(files=[["../etc", 1]]), "bad file name"),
        (_bad_dir(files=[["a/b", 1]]), "bad file name"),
        (_bad_dir(files=[[".x", 1]]), "bad file name"),
        (_bad_dir(files=[["..", 1]]), "bad file name"),
        (_bad_dir(files=[["a", 1], ["a", 2]]), "twice"),
        (_bad_dir(files=[["a", -1]]), "malformed file entry"),
        (_bad_dir(files=[["a", True]]), "malformed file entry"),
        (_bad_dir(files=[["a"]]), "malformed file entry"),
        (_bad_dir(files="a"), "'files' is str"),
    ],
)
def test_bad_announcements_are_refused(
    chans: tuple[Channel, Channel], tmp_path: Path, msg: dict[str, Any], complaint: str
) -> None:
    client, server = chans
    client.send(msg)
    with pytest.raises(WireError, match=complaint):
        server.recv_dir(tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(PeerError, match="the destination failed to receive"):
        client.recv()


def _zstd_lying_about_size() -> bytes:
    packed: bytes = zstandard.ZstdCompressor().compress(b"z" * (1 << 20))
    return packed  # announces 1 MiB for a 10-byte file


@pytest.mark.parametrize(
    ("frames", "complaint"),
    [
        ([{"type": "chunk", "data": b"x" * 11}], "more data for a than the 10 bytes"),
        ([{"type": "chunk", "data": b""}], "chunk of 0 bytes"),
        ([{"type": "chunk", "zstd": b"garbage"}], "bad or unknown size"),
        ([{"type": "chunk", "zstd": _zstd_lying_about_size()}], "bad or unknown size"),
        ([{"type": "chunk", "data": b"x" * 10}, {"type": "chunk", "data": b"y"}], "expected a 'dir_end'"),
        ([{"type": "chunk", "data": b"x" * 10}, {"type": "dir_end", "files": 1, "bytes": 11}], "do not match"),
        ([{"type": "dir_end", "files": 1, "bytes": 10}], "expected a 'chunk'"),
    ],
)
def test_bad_content_is_refused_and_removed(
    chans: tuple[Channel, Channel], tmp_path: Path, frames: list[dict[str, Any]], complaint: str
) -> None:
    client, server = chans
    client.send(_bad_dir(files=[["a", 10]]))
    for f in frames:
        client.send(f)
    with pytest.raises(WireError, match=complaint):
        server.recv_dir(tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(PeerError, match="expected a|the destination failed to receive img"):
        client.recv()


def test_an_existing_destination_is_refused_and_the_source_told(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "keep").write_bytes(b"mine")
    src = _image(tmp_path / "src", {"pages.img": _random(4 << 20)})
    with wire.listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        client, server = _both(
            lambda: Channel.connect("127.0.0.1", port, TOKEN, timeout=T),
            lambda: Channel.accept(listener, TOKEN, timeout=T),
        )

    def receive() -> str:
        with server:
            final: str = server.recv_dir(root)
            return final

    def send() -> None:
        client.send_dir(src, "img")
        client.expect("stored")  # a small image may be all sent before the refusal comes

    with client:
        sent, received = _both(send, receive)
    assert isinstance(received, ImageError) and "already exists" in str(received)
    assert isinstance(sent, PeerError) and "already exists; refusing to overwrite it" in str(sent), sent
    assert os.listdir(root) == ["img"] and os.listdir(root / "img") == ["keep"]


def test_an_empty_existing_destination_is_used(chans: tuple[Channel, Channel], tmp_path: Path) -> None:
    client, server = chans
    (tmp_path / "img").mkdir()
    _, final = _transfer(client, server, _image(tmp_path / "src", {"a": b"1"}), tmp_path, "img")
    assert os.listdir(final) == ["a"]


def test_max_bytes_refuses_up_front(chans: tuple[Channel, Channel], tmp_path: Path) -> None:
    client, server = chans
    client.send(_bad_dir(files=[["a", 1000]]))
    with pytest.raises(CkptError, match="over the limit of 999"):
        server.recv_dir(tmp_path, max_bytes=999)
    assert os.listdir(tmp_path) == []


def test_the_sender_refuses_what_it_cannot_send(chans: tuple[Channel, Channel], tmp_path: Path) -> None:
    client, _ = chans
    before = client.bytes_sent
    src = _image(tmp_path / "src", {"a": b"1"})
    with pytest.raises(UsageError, match="the name starts with '.'"):
        client.send_dir(src, "..")
    (src / "sub").mkdir()
    with pytest.raises(ImageError, match="sub is not a regular file"):
        client.send_dir(src, "img")
    (src / "sub").rmdir()
    (src / "link").symlink_to(src / "a")
    with pytest.raises(ImageError, match="link is not a regular file"):
        client.send_dir(src, "img")
    with pytest.raises(ImageError, match="cannot read the directory"):
        client.send_dir(tmp_path / "missing", "img")
    assert client.bytes_sent == before and client.broken is None  # nothing went out


# -- tokens -----------------------------------------------------------------------


def test_load_token_strips_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "token"
    save_token(path, TOKEN)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token(path) == TOKEN
    path.write_text(f"  {TOKEN}\n\n")
    assert load_token(path) == TOKEN
    with pytest.raises(UsageError, match="already exists"):
        save_token(path)

    path.write_text(" \n")
    with pytest.raises(UsageError, match="token file is empty"):
        load_token(path)
    path.write_text("short\n")
    with pytest.raises(UsageError, match="too short"):
        load_token(path)
    path.write_text(TOKEN)
    os.chmod(path, 0o644)
    with pytest.raises(UsageError, match=r"accessible by group or others \(mode 0644\)") as err:
        load_token(path)
    assert err.value.hint == f"chmod 600 {path}"
    with pytest.raises(UsageError, match="does not exist"):
        load_token(tmp_path / "missing")


def test_generated_tokens_are_long_and_fresh() -> None:
    tokens = {generate_token() for _ in range(10)}
    assert len(tokens) == 10 and all(len(t) == 64 and int(t, 16) >= 0 for t in tokens)
