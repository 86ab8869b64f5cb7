"""TLS under the migration wire (ckpt/migrate/tls.py) and ``receive --allow`` (ckpt/migrate/peers.py).

Real sockets (socketpairs, loopback TCP), the peer in a thread; a throwaway PKI per test (tests/tlscerts.py).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ckpt.errors import UsageError
from ckpt.migrate import tls
from ckpt.migrate.peers import parse_allow
from ckpt.migrate.wire import AuthError, Channel, PeerError, Role, WireError, generate_token
from test_migrate_wire import _both
from test_migrate_wire import test_one_thread_may_send_while_another_receives as _send_while_receiving
from tlscerts import CA, Pair

TOKEN = generate_token()
T = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pair, Pair, CA]:
    """(the source's pair, the receiver's pair, their CA)."""
    ca = CA(tmp_path)
    return ca.issue("source"), ca.issue("receiver"), ca


def _config(pair: Pair, *, server_side: bool, check_hostname: bool = True) -> tls.TlsConfig:
    return tls.load(server_side=server_side, cacert=str(pair.cacert), cert=str(pair.cert), key=str(pair.key),
                    check_hostname=check_hostname)


def _connect(client_tls: tls.TlsConfig | None, server_tls: tls.TlsConfig | None,
             host: str = "127.0.0.1") -> tuple[Any, Any]:
    """A channel over loopback TCP (the client checks the certificate against ``host``): (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        return _both(lambda: Channel.connect(host, port, TOKEN, timeout=T, tls=client_tls),
                     lambda: Channel.accept(listener, TOKEN, timeout=T, io_timeout=T, tls=server_tls))


def _close(*chans: Any) -> None:
    for ch in chans:
        if isinstance(ch, Channel):
            ch.close()


def test_tls_carries_messages_and_replaces_the_frame_sealing(pki: tuple[Pair, Pair, CA]) -> None:
    source, receiver, _ = pki
    client, server = _connect(_config(source, server_side=False), _config(receiver, server_side=True))
    try:
        assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
        assert client.tls and server.tls
        assert client._send_seal is None and server._recv_seal is None  # TLS protects the frames
        blob = os.urandom(3 << 20)  # frames larger than a TLS record and than one send of the stream
        sender = threading.Thread(target=lambda: [client.send({"type": "chunk", "i": i, "data": blob})
                                                  for i in range(4)])
        sender.start()
        for i in range(4):
            msg = server.recv()
            assert msg["i"] == i and msg["data"] == blob
        sender.join(T)
        server.send({"type": "ack"})
        assert client.expect("ack")["type"] == "ack"
    finally:
        _close(client, server)


def test_one_thread_may_send_while_another_receives_in_tls(pki: tuple[Pair, Pair, CA]) -> None:
    """One lock keeps OpenSSL to one thread at a time; the wire's own test, in TLS."""
    source, receiver, _ = pki
    client, server = _connect(_config(source, server_side=False), _config(receiver, server_side=True))
    try:
        assert client.tls and server.tls
        _send_while_receiving((client, server))
    finally:
        _close(client, server)


def test_a_source_with_a_certificate_of_another_ca_is_refused_on_both_sides(pki: tuple[Pair, Pair, CA],
                                                                             tmp_path: Path) -> None:
    _, receiver, _ = pki
    stranger = CA(tmp_path, "other").issue("source")
    # It trusts the receiver's CA, so it gets as far as presenting its own certificate.
    mixed = Pair(stranger.cert, stranger.key, receiver.cacert)
    client, server = _connect(_config(mixed, server_side=False), _config(receiver, server_side=True))
    _close(client, server)
    assert isinstance(server, AuthError) and "TLS certificate of the source (peer 127.0.0.1:" in str(server), server
    assert isinstance(client, AuthError) and "refused the TLS connection (alert: unknown ca)" in str(client), client


def test_a_destination_of_another_ca_is_refused_by_the_source(pki: tuple[Pair, Pair, CA], tmp_path: Path) -> None:
    source, _, _ = pki
    impostor = CA(tmp_path, "other").issue("receiver")
    client, server = _connect(_config(source, server_side=False), _config(impostor, server_side=True))
    _close(client, server)
    assert isinstance(client, AuthError) and "TLS certificate of the destination (peer 127.0.0.1:" in str(client), client
    assert isinstance(server, AuthError), server


def test_a_source_without_a_certificate_is_refused(pki: tuple[Pair, Pair, CA]) -> None:
    _, receiver, _ = pki
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.minimum_version = ssl.TLSVersion.TLSv1_3
    bare.load_verify_locations(str(receiver.cacert))
    client, server = _connect(tls.TlsConfig(bare, server_side=False), _config(receiver, server_side=True))
    _close(client, server)
    assert isinstance(server, AuthError) and "presented no TLS certificate" in str(server), server
    assert isinstance(client, AuthError), client


def test_the_destination_must_be_named_by_its_certificate(pki: tuple[Pair, Pair, CA]) -> None:
    source, _, ca = pki
    elsewhere = ca.issue("elsewhere", addresses=("192.0.2.7",))
    client, server = _connect(_config(source, server_side=False), _config(elsewhere, server_side=True))
    _close(client, server)
    assert isinstance(client, AuthError) and "does not name the address" in str(client), client
    assert "--tls-no-cn-verify" in (client.hint or "")
    # CRIU's --tls-no-cn-verify: the CA alone decides.
    client, server = _connect(_config(source, server_side=False, check_hostname=False),
                              _config(elsewhere, server_side=True))
    _close(client, server)
    assert isinstance(client, Channel) and client.tls, client


def test_tls_on_one_side_only_is_refused_in_words_on_both_sides(pki: tuple[Pair, Pair, CA]) -> None:
    source, receiver, _ = pki
    client, server = _connect(None, _config(receiver, server_side=True))
    _close(client, server)
    assert isinstance(client, PeerError) and "takes only TLS connections" in str(client), client
    assert isinstance(server, AuthError) and "did not start TLS" in str(server), server
    client, server = _connect(_config(source, server_side=False), None)
    _close(client, server)
    assert isinstance(client, AuthError) and "does not speak TLS" in str(client), client
    assert isinstance(server, WireError) and "speaks TLS and this side does not" in str(server), server


def _pump(src: socket.socket, dst: socket.socket, change: Callable[[int, bytes], bytes] = lambda seen, d: d) -> None:
    """Forward ``src`` to ``dst`` (``change(bytes before, data)`` on the way) until either ends, then end both."""
    seen = 0
    try:
        while data := src.recv(65536):
            dst.sendall(change(seen, data))
            seen += len(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def test_a_record_altered_in_transit_breaks_the_channel(pki: tuple[Pair, Pair, CA]) -> None:
    """Without the wire's own sealing, TLS alone must catch a flipped bit."""
    source, receiver, _ = pki
    a, a_inner = socket.socketpair()
    b, b_inner = socket.socketpair()
    flip_at = 300_000  # well past the handshakes, inside the big frame

    def flip(seen: int, data: bytes) -> bytes:
        if not seen <= flip_at < seen + len(data):
            return data
        out = bytearray(data)
        out[flip_at - seen] ^= 0x01
        return bytes(out)

    pumps = [threading.Thread(target=_pump, args=(a_inner, b_inner, flip), daemon=True),
             threading.Thread(target=_pump, args=(b_inner, a_inner), daemon=True)]
    for t in pumps:
        t.start()
    client, server = _both(
        lambda: Channel(a, TOKEN, Role.CLIENT, timeout=T, tls=_config(source, server_side=False),
                        server_hostname="127.0.0.1"),
        lambda: Channel(b, TOKEN, Role.SERVER, timeout=T, tls=_config(receiver, server_side=True)))
    try:
        assert isinstance(client, Channel) and isinstance(server, Channel), (client, server)
        sent: list[BaseException] = []

        def send() -> None:
            try:
                client.send({"type": "chunk", "data": os.urandom(1 << 20)})
            except WireError as exc:  # the receiver hung up on it
                sent.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        with pytest.raises(WireError, match=r"TLS from .* failed: .*\(altered in transit\?\)"):
            server.recv()
        assert server.broken
        server.close()
        sender.join(T)
    finally:
        _close(client, server)
        for s in (a_inner, b_inner):
            s.close()


class _TlsRelay:
    """A man in the middle with a certificate of the CA, but no token: TLS ended towards each side, bytes relayed."""

    def __init__(self, as_server: Pair, as_client: Pair, to_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._to_port = to_port
        self._srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._srv.verify_mode = ssl.CERT_REQUIRED
        self._srv.load_verify_locations(str(as_server.cacert))
        self._srv.load_cert_chain(str(as_server.cert), str(as_server.key))
        self._cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._cli.load_verify_locations(str(as_client.cacert))
        self._cli.load_cert_chain(str(as_client.cert), str(as_client.key))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        try:
            front = self._srv.wrap_socket(conn, server_side=True)
            back = self._cli.wrap_socket(socket.create_connection(("127.0.0.1", self._to_port)),
                                         server_hostname="127.0.0.1")
        except (OSError, ssl.SSLError):
            return
        # One thread for both TLS sessions: an SSL object must not be used from two threads at once.
        other = {front: back, back: front}
        for s in other:
            s.setblocking(False)
        try:
            while True:
                ready = [s for s in other if s.pending()] or select.select(list(other), [], [], T)[0]
                if not ready:
                    return
                for s in ready:
                    try:
                        data = s.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        return
                    other[s].sendall(data)  # (handshake-sized: the socket takes it at once)
        except OSError:
            pass
        finally:
            for s in other:
                s.close()


def test_a_relay_holding_a_certificate_but_not_the_token_cannot_join_two_sessions(
        pki: tuple[Pair, Pair, CA]) -> None:
    """The token proofs are bound to the TLS session: relayed into another session, they fail."""
    source, receiver, ca = pki
    with socket.create_server(("127.0.0.1", 0)) as listener:
        relay = _TlsRelay(ca.issue("relay-front"), ca.issue("relay-back"), listener.getsockname()[1])
        client, server = _both(
            lambda: Channel.connect("127.0.0.1", relay.port, TOKEN, timeout=T, tls=_config(source, server_side=False)),
            lambda: Channel.accept(listener, TOKEN, timeout=T, io_timeout=T, tls=_config(receiver, server_side=True)))
    _close(client, server)
    relay.listener.close()
    assert isinstance(client, AuthError) and isinstance(server, AuthError), (client, server)
    assert "failed authentication" in str(server) or "refused our authentication" in str(client)


# -- the files -----------------------------------------------------------------


def test_a_key_others_may_read_is_refused_first(pki: tuple[Pair, Pair, CA]) -> None:
    source, _, _ = pki
    os.chmod(source.key, 0o644)
    with pytest.raises(UsageError, match=r"TLS private key \(--tls-key\) is accessible by group or others"):
        tls.load(server_side=False, cacert="/nonexistent", cert="/nonexistent", key=str(source.key))


def test_a_key_of_another_user_is_refused(pki: tuple[Pair, Pair, CA]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    source, _, _ = pki
    os.chown(source.key, 65534, 65534)
    with pytest.raises(UsageError, match="belongs to uid 65534"):
        _config(source, server_side=False)


def test_bad_files_are_the_users_to_fix(pki: tuple[Pair, Pair, CA], tmp_path: Path) -> None:
    source, receiver, _ = pki
    with pytest.raises(UsageError, match=r"TLS CA certificate \(--tls-cacert\) does not exist"):
        tls.load(server_side=True, cacert=str(tmp_path / "none"), cert=str(source.cert), key=str(source.key))
    with pytest.raises(UsageError, match="not a PEM certificate"):
        tls.load(server_side=True, cacert=str(source.cacert), cert=str(source.key), key=str(source.key))
    with pytest.raises(UsageError, match="is not the key of the certificate"):
        tls.load(server_side=True, cacert=str(source.cacert), cert=str(source.cert), key=str(receiver.key))
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(UsageError, match="not a PEM private key"):
        tls.load(server_side=True, cacert=str(source.cacert), cert=str(source.cert), key=str(garbage))


def test_tls_files_default_to_criu_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"/etc/pki/criu/private/key.pem: TLS private key"):
        tls.load(server_side=False, cacert=None, cert=None, key=None)


# -- --allow -------------------------------------------------------------------


def test_allow_admits_its_networks_only() -> None:
    allow = parse_allow("10.0.0.0/8, 127.0.0.1,2001:db8::/32")
    assert allow.admits("10.1.2.3") and allow.admits("127.0.0.1") and allow.admits("2001:db8::5")
    assert allow.admits("::ffff:10.9.9.9")  # an IPv4 source seen by a receiver on [::]
    assert not allow.admits("127.0.0.2") and not allow.admits("192.0.2.1") and not allow.admits("::1")
    assert str(allow) == "10.0.0.0/8,127.0.0.1/32,2001:db8::/32"


@pytest.mark.parametrize("text", ["10.0.0.0/33", "10.0.0.1/8", "example.org", "10.0.0.0/8,,", ""])
def test_a_bad_allow_list_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--allow"):
        parse_allow(text)


def test_channel_role_is_unchanged_by_tls() -> None:
    assert Role.CLIENT.other is Role.SERVER
