"""The wire of live migration: one TCP connection of sealed (encrypted and authenticated) msgpack frames.

The source (``ckpt migrate``) and the destination (``ckpt receive``) talk over a
single connection (DESIGN.md §6).  Everything on it is a *frame*::

    u32 length, big-endian | msgpack map with a "type" key, sealed | 16-byte tag

``length`` counts the sealed map and the tag.  A frame may be at most :data:`MAX_FRAME`
bytes, and at most :data:`MAX_HANDSHAKE_FRAME` before the peer has proven it
knows the token, so neither a corrupt stream nor a stranger can make us
allocate more than that.  Bulk data (file content) travels in ``chunk`` frames
of at most :data:`MAX_CHUNK` bytes, so memory stays bounded on both sides.

Handshake (the only frames in clear; both peers hold the same secret token):

1. each side sends ``hello`` at once: protocol name, the range of protocol
   versions it speaks (``version`` the oldest, ``max_version`` the newest; a
   ckpt 0.1.0 sent ``version`` alone and accepted exactly that one), its role
   (``client`` connects, ``server`` accepts) and a fresh 32-byte nonce.  Both
   sides then use the newest version both speak (:attr:`Channel.version`), so
   a ckpt talks to the previous release as that release would; when the
   ranges do not meet, both refuse with the same one-line error naming both
   ranges and both ckpt versions, before anything else happens.  ``type``,
   ``protocol`` and ``version`` of ``hello`` are frozen: any future version
   must keep them so the refusal stays readable (an old ckpt that sees a
   ``version`` it lacks says so).
2. the client sends ``auth`` with ``HMAC-SHA256(token, "proof" | "client" | T)``
   where ``T`` is a SHA-256 of both hellos exactly as sent (nonces, versions,
   roles).  The server checks it with ``hmac.compare_digest`` and only then
   answers with its own proof (label ``"server"``), so a stranger gets nothing
   computed from the token.  The role label makes a proof useless in the other
   direction (no reflection); the nonces make it useless in another session (no
   replay); covering the hellos makes any change to them (a downgrade) fail.
3. both derive one 256-bit key per direction with HKDF-SHA256 (the token as
   key material, ``T`` as salt: the keys are new in every session, since both
   nonces are in ``T``).  From then on every frame's map is sealed with
   AES-256-GCM under the key of its direction, with the frame's sequence
   number in that direction as nonce (an implicit counter: never sent, never
   repeated under one key) and the length prefix as associated data.  A frame
   read, injected, altered, dropped, replayed, reordered or reflected by a man
   in the middle is unreadable to it or detected.  The client closes the
   handshake with a sealed ``auth_ok``, the first proof that both sides
   derived the same keys.

TLS (``--tls`` on both sides, :mod:`ckpt.migrate.tls`): the connection is
TLS 1.3 with a certificate on each side before the first frame, and the
handshake above runs inside it unchanged, but for two things.  Each hello
says ``"tls": true``; when both do, ``T`` also covers the TLS session's
``tls-unique`` channel binding, so the proofs hold only inside that one TLS
session (a holder of a CA certificate who terminates TLS towards each side
and relays the frames has two sessions, two bindings: the proofs fail), and
the frames are not sealed a second time — TLS already encrypts and
authenticates them, and AES-GCM twice halves the throughput.  When either
hello lacks it (e.g. TLS ended by a proxy in front of a plain receiver), the
frames are sealed as above.  A plain peer facing a TLS one is refused at
once, in words, on both sides.

The token never crosses the wire, and nothing of the process (its memory, its
secrets) travels in clear: a peer that does not seal its frames (protocol 2 and
older, ckpt 0.2.x) is refused, naming both versions.  A fake destination that
the source connects to does get one client proof and could try to guess the
token offline, which is why tokens must be long and random
(:func:`generate_token`: 256 bits) and shorter than :data:`MIN_TOKEN_LENGTH`
characters are refused.  AES-GCM runs at several GB/s a core where the CPU has
AES instructions (every x86_64 server); bench/run.py measures it beside zstd.

Any ``{"type": "error", "message": ...}`` frame the peer sends is raised as
:class:`PeerError` by :meth:`Channel.recv` (so by everything that receives), and
:meth:`Channel.send_error` sends one on our failure paths, so both sides end
with a one-line reason rather than a timeout.

Directory transfer (:meth:`Channel.send_dir`, :meth:`Channel.recv_dir`) sends an
image directory — a flat directory of regular files — as ``dir`` (the name and
``[file name, size]`` list), then the content of each file in order as
``chunk`` frames (``data`` raw, or ``zstd`` one zstd frame when wire compression
is asked for and pays), then ``dir_end`` with the file count and byte total.
There is no per-file SHA-256: the AEAD tags already authenticate every byte and the
order of the frames, which is stronger than a checksum and costs no second
hash pass; the receiver checks every size and the totals, and an image also
keeps its own per-file checksums for ``ckpt verify``.

A :class:`Channel` is not thread-safe, except that one thread may send while
another receives (a source streaming data while watching for the
destination's error).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import hmac
import math
import os
import secrets
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import msgpack
import zstandard

import ckpt
from ckpt.errors import CkptError, ImageError, UsageError
from ckpt.kernel.fileio import fsync_dir
from ckpt.secretfile import read_secret_file

if TYPE_CHECKING:
    from .tls import TlsConfig, TlsStream

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_TIMEOUT",
    "MAX_CHUNK",
    "MAX_DIR_FILES",
    "MAX_FRAME",
    "MAX_HANDSHAKE_FRAME",
    "MIN_TOKEN_LENGTH",
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "MIN_PROTOCOL_VERSION",
    "AuthError",
    "Channel",
    "DirFile",
    "DirTransfer",
    "PeerError",
    "Role",
    "WireError",
    "WireTimeout",
    "field",
    "generate_token",
    "listen",
    "load_token",
    "save_token",
]

PROTOCOL_NAME = "ckpt-migrate"
#: The newest protocol this ckpt speaks.  Bumped on any change of the frames after ``hello``; a
#: ckpt keeps speaking the previous release's version too (MIN_PROTOCOL_VERSION), so hosts are
#: upgraded one at a time.
#:   1: ckpt 0.1.0 (the versions had to be equal).
#:   2: hello has ``max_version`` (negotiation); ``ready`` says which image formats and
#:      features the destination restores (ckpt/migrate/source.py, ``DestReads``), so a
#:      source refuses to send an image the destination would refuse, naming what it lacks;
#:      the switch-over is a commit: "restore" → "restored" (built, held) → "commit" →
#:      "running" (version 1: "restore" → "running").
#:   3: every frame after the proofs is sealed with AES-256-GCM (keys from HKDF), where 1 and 2
#:      only tagged them with HMAC-SHA256 and sent memory in clear.
PROTOCOL_VERSION = 3
#: The oldest protocol this ckpt still speaks: none that sends memory in clear.
MIN_PROTOCOL_VERSION = 3
#: Test aid: ``CKPT_TEST_PROTOCOL=N`` makes this ckpt speak version N only (as a ckpt of that
#: version would), to test a mix of versions on one machine.  Read here and nowhere else.
PROTOCOL_ENV = "CKPT_TEST_PROTOCOL"
#: Largest frame accepted after authentication (map + tag; the 4-byte prefix not counted).
MAX_FRAME = 64 << 20
#: Largest frame accepted before the peer has proven it knows the token.
MAX_HANDSHAKE_FRAME = 4096
#: Raw bytes of file content per ``chunk`` frame sent.
CHUNK_SIZE = 1 << 20
#: Largest ``chunk`` accepted (raw, or decompressed).
MAX_CHUNK = 4 << 20
#: Most files a transferred directory may hold (its ``dir`` frame must fit in a frame).
MAX_DIR_FILES = 1 << 16
#: Seconds a connect, a handshake, or one send or receive may take by default.
DEFAULT_TIMEOUT = 60.0
#: Shortest token accepted: guessing must stay out of reach (see the module docstring).
MIN_TOKEN_LENGTH = 16
NONCE_SIZE = 32
#: Bytes of an authentication proof (HMAC-SHA256).
TAG_SIZE = 32
#: Bytes of a sealed frame's AES-GCM tag.
SEAL_TAG_SIZE = 16

_HEADER = struct.Struct(">I")
_MAX_TOKEN_FILE = 4096
#: A best-effort error frame never holds up a failure path longer than this.
_ERROR_SEND_TIMEOUT = 1.0
#: Peer-supplied text is cut to this many characters before it reaches a terminal.
_MAX_PEER_TEXT = 500
_TOKEN_HINT = "both sides must use the same token file"


# -- errors --------------------------------------------------------------------


class WireError(CkptError):
    """The connection to the peer failed: closed, timed out, corrupt, refused, out of protocol."""


class WireTimeout(WireError):
    """Nothing (or not enough) came from, or could go to, the peer in time."""


class AuthError(WireError):
    """The handshake's mutual authentication failed (most likely different tokens)."""


class PeerError(WireError):
    """The peer sent an ``error`` frame: it failed, and says why."""

    def __init__(self, message: str, *, peer_message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.peer_message = peer_message


# -- tokens --------------------------------------------------------------------


def generate_token() -> str:
    """A fresh random token: 64 hex digits (256 bits)."""
    return secrets.token_hex(32)


def load_token(path: str | os.PathLike[str]) -> str:
    """Read a token file, stripped of surrounding whitespace.

    Refused, with the reason: a missing, empty or non-regular file, a token
    shorter than :data:`MIN_TOKEN_LENGTH`, and a file that group or others may
    read or write, or that belongs to another user than us or root.  Whoever
    holds the token can make a receiver (running as root) restore any process
    image, so the file gets the care of an SSH private key.
    """
    where = os.fspath(path)
    data = read_secret_file(where, "token file", max_size=_MAX_TOKEN_FILE,
                            missing_hint="put the same random token (e.g. 64 hex digits) in a file of mode 0600 "
                                         "on both hosts")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{where}: token file is not UTF-8 text") from None
    if not token:
        raise UsageError(f"{where}: token file is empty")
    if len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"{where}: token is too short ({len(token)} characters, at least {MIN_TOKEN_LENGTH})",
            hint="use a long random token, e.g. 64 hex digits",
        )
    return token


def save_token(path: str | os.PathLike[str], token: str | None = None) -> str:
    """Write ``token`` (a new one by default) to a new file of mode 0600 and return it.

    Never overwrites: an existing file (or symlink) at ``path`` is refused.
    """
    where = os.fspath(path)
    token = generate_token() if token is None else token
    _token_bytes(token)
    try:
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{where}: already exists; refusing to overwrite a token file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot create the token file: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode("utf-8") + b"\n")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(where)
        raise UsageError(f"{where}: cannot write the token file: {exc.strerror or exc}") from None
    os.close(fd)
    return token


def _token_bytes(token: str | bytes) -> bytes:
    """The HMAC key of a token, surrounding whitespace ignored (as :func:`load_token` does)."""
    key = (token.encode("utf-8") if isinstance(token, str) else bytes(token)).strip()
    if len(key) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"the migration token is too short ({len(key)} bytes, at least {MIN_TOKEN_LENGTH})",
            hint="use a long random token, e.g. 64 hex digits",
        )
    return key


# -- handshake cryptography ----------------------------------------------------


class Role(enum.Enum):
    """Which end of the connection a peer is; part of every proof, so proofs cannot be reflected."""

    CLIENT = "client"  # connects: the source
    SERVER = "server"  # accepts: the destination

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


def _transcript(client_hello: bytes, server_hello: bytes, tls_binding: bytes = b"") -> bytes:
    """SHA-256 of both hellos as sent, each length-prefixed: what proofs and keys are bound to.

    ``tls_binding``: the TLS session's channel binding when both sides run in TLS (see "TLS" above).
    """
    h = hashlib.sha256(PROTOCOL_NAME.encode() + b" transcript\0")
    for hello in (client_hello, server_hello):
        h.update(_HEADER.pack(len(hello)))
        h.update(hello)
    if tls_binding:
        h.update(b"tls-unique\0" + tls_binding)
    return h.digest()


def _proof(token: bytes, role: Role, transcript: bytes) -> bytes:
    label = f"{PROTOCOL_NAME} proof\0{role.value}\0".encode()
    return hmac.digest(token, label + transcript, "sha256")


def _direction_keys(token: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(client→server key, server→client key) of this session: HKDF-SHA256 of the token, salted with ``T``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def derive(direction: str) -> bytes:
        info = f"{PROTOCOL_NAME} 3 frames {direction}".encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=transcript, info=info).derive(token)

    return derive("client to server"), derive("server to client")


class _Sealer:
    """AES-256-GCM of one direction: frame ``n`` is sealed with nonce ``n`` (96 bits, big-endian)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self.seq = 0

    def _nonce(self) -> bytes:
        return self.seq.to_bytes(12, "big")

    def seal(self, payload: bytes, header: bytes) -> bytes:
        """``payload`` encrypted, with its tag; the next frame gets the next nonce."""
        out = self._aead.encrypt(self._nonce(), payload, header)
        self.seq += 1
        return out

    def open(self, body: bytearray, header: bytes) -> bytes | None:
        """The map of a sealed ``body``, or None when it fails authentication (the nonce then stays)."""
        from cryptography.exceptions import InvalidTag

        try:
            out = self._aead.decrypt(self._nonce(), body, header)
        except InvalidTag:
            return None
        self.seq += 1
        return out


# -- messages ------------------------------------------------------------------

T = TypeVar("T")


def field(msg: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """``msg[key]`` if present and of ``kind`` (a bool is not an int), else a WireError naming both."""
    value = msg.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(
            f"malformed {msg.get('type')!r} message: {key!r} is "
            f"{'missing' if value is None else type(value).__name__}, expected {kind.__name__}"
        )
    return value


def _pack(msg: Mapping[str, Any]) -> bytes:
    if not isinstance(msg.get("type"), str):
        raise TypeError(f"a message needs a str 'type', got {msg!r:.200}")
    try:
        packed: bytes = msgpack.packb(dict(msg), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{msg['type']!r} message cannot be encoded: {exc}") from exc
    return packed


def _printable(text: object) -> str:
    """Peer-supplied text made safe for a terminal: no control characters, bounded length."""
    s = text if isinstance(text, str) else repr(text)
    s = "".join(c if c.isprintable() else "?" for c in s)
    return s if len(s) <= _MAX_PEER_TEXT else s[: _MAX_PEER_TEXT - 1] + "…"


def _name_problem(name: object) -> str | None:
    """Why ``name`` is not a plain file name we would create, or None when it is fine."""
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if name.startswith("."):
        return "starts with '.' (., .. and hidden names are not allowed)"
    if "/" in name:
        return "contains '/'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(encoded) > 255:
        return "is longer than 255 bytes"
    return None


@dataclass(frozen=True)
class _Deadline:
    """When an operation must be over; ``at`` None waits forever."""

    timeout: float | None
    at: float | None

    @classmethod
    def start(cls, timeout: float | None) -> _Deadline:
        if timeout is None or math.isinf(timeout):
            return cls(None, None)
        if timeout < 0 or math.isnan(timeout):
            raise ValueError(f"timeout must be ≥ 0, got {timeout}")
        return cls(timeout, time.monotonic() + timeout)

    def wait_ms(self) -> int | None:
        """Milliseconds left for poll(2): -1 forever, None when expired."""
        if self.at is None:
            return -1
        left = self.at - time.monotonic()
        return None if left <= 0 else math.ceil(left * 1000)


# -- directory transfer records ------------------------------------------------


@dataclass(frozen=True)
class DirFile:
    """One file of a transferred directory, as announced in its ``dir`` frame."""

    name: str
    size: int


@dataclass(frozen=True)
class DirTransfer:
    """What :meth:`Channel.send_dir` sent: for migration statistics."""

    name: str
    files: int
    size: int  # bytes of file content
    wire_bytes: int  # bytes that went on the wire for it, framing included
    seconds: float


# -- the channel ---------------------------------------------------------------


def _speaks(versions: tuple[int, int]) -> tuple[int, int]:
    """The (oldest, newest) protocol versions this side speaks: ``versions`` unless the test aid narrows them."""
    forced = os.environ.get(PROTOCOL_ENV)
    if forced:
        try:
            n = int(forced)
        except ValueError:
            raise UsageError(f"{PROTOCOL_ENV}={forced!r}: not a protocol version") from None
        if not MIN_PROTOCOL_VERSION <= n <= PROTOCOL_VERSION:
            raise UsageError(f"{PROTOCOL_ENV}={n}: this ckpt speaks {_span(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)}")
        return n, n
    return versions


def _span(low: int, high: int) -> str:
    """How a range of protocol versions reads in a message: "version 2", "versions 1-2"."""
    return f"version {low}" if low == high else f"versions {low}-{high}"


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return ""


def listen(host: str, port: int, *, backlog: int = 4) -> socket.socket:
    """A listening TCP socket for :meth:`Channel.accept` (IPv6 when ``host`` has a ':').

    An address that cannot be listened on — a bad port, a host that does not
    resolve or is not an address of this machine, a port in use or reserved —
    is the user's to change: a UsageError naming it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = _address((host or "*", port))
    if not 0 <= port <= 65535:
        raise UsageError(f"cannot listen on {where}: the port must be 0-65535")
    try:
        socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {where}: {exc.strerror}") from None
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        hint = {
            errno.EADDRINUSE: "another program (another `ckpt receive`?) listens on this port: choose another",
            errno.EADDRNOTAVAIL: "give an address of this host (`ip addr`), or 0.0.0.0 for all of them",
            errno.EACCES: "ports below 1024 need root (CAP_NET_BIND_SERVICE)",
        }.get(exc.errno or 0)
        error = UsageError if hint else WireError
        why = os.strerror(exc.errno) if exc.errno else str(exc)  # (create_server's strerror repeats the address)
        raise error(f"cannot listen on {where}: {why}", hint=hint) from None


class Channel:
    """An authenticated connection to the peer; see the module docstring for the protocol.

    Constructing one runs the handshake over the connected ``sock`` (which the
    channel then owns and closes); use :meth:`connect` and :meth:`accept`.
    ``timeout`` (seconds, None for ever) bounds the handshake and is the default
    of every later send and receive.
    """

    #: The versions this side speaks, oldest and newest; a subclass may differ (tests of the refusal).
    _protocol_versions: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)

    def __init__(
        self,
        sock: socket.socket,
        token: str | bytes,
        role: Role,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        peer: str | None = None,
        tls: TlsConfig | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.role = role
        self.timeout = timeout
        #: The protocol version both sides speak (the newest both know), set by the handshake.
        self.version = 0
        #: The ckpt version the peer announced ("" if none), for messages.
        self.peer_software = ""
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.frames_received = 0
        self._sock = sock
        self._closed = False
        self._broken: str | None = None
        self._send_seal: _Sealer | None = None  # keyed for our direction, once authenticated
        self._recv_seal: _Sealer | None = None
        self._tls: TlsStream | None = None  # with --tls: what frames go through (module docstring, "TLS")
        self._peer_tls = False  # the peer's hello says it runs in TLS too
        self._recv_lock = threading.Lock()  # one receiver at a time (and the salvage of a reset)
        self._send_lock = threading.Lock()  # frames never interleave, even with send_error from the receiver
        try:
            if peer is None:
                try:
                    peer = _address(sock.getpeername())
                except OSError:
                    peer = ""
            self.peer = peer
            key = _token_bytes(token)
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._rpoll = select.poll()
            self._rpoll.register(sock.fileno(), select.POLLIN)
            self._wpoll = select.poll()
            self._wpoll.register(sock.fileno(), select.POLLOUT)
            deadline = _Deadline.start(timeout)
            if tls is not None:
                self._tls = tls.wrap(sock, server_hostname,
                                     lambda readable: self._wait(self._rpoll if readable else self._wpoll, deadline),
                                     self.who)
            self._handshake(key, deadline)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, token: str | bytes, *, timeout: float | None = DEFAULT_TIMEOUT,
                tls: TlsConfig | None = None) -> Channel:
        """Connect to a listening destination and authenticate (client side).

        ``timeout`` bounds the connection, the handshake, and is the channel's default.
        ``tls``: run in TLS (:mod:`ckpt.migrate.tls`), its certificate checked against ``host``.
        """
        _token_bytes(token)  # a bad token is the user's mistake: say so before any traffic
        where = _address((host, port))
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except socket.gaierror as exc:
            raise WireError(f"cannot resolve {host}: {exc.strerror}") from None
        except TimeoutError:
            raise WireTimeout(f"connecting to {where} timed out after {timeout:g} s") from None
        except ConnectionRefusedError:
            raise WireError(
                f"cannot connect to {where}: connection refused",
                hint="is `ckpt receive` running and listening there?",
            ) from None
        except OSError as exc:
            raise WireError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        return cls(sock, token, Role.CLIENT, timeout=timeout, peer=where, tls=tls, server_hostname=host)

    @classmethod
    def accept(
        cls,
        sock: socket.socket,
        token: str | bytes,
        *,
        timeout: float | None = None,
        io_timeout: float | None = DEFAULT_TIMEOUT,
        tls: TlsConfig | None = None,
    ) -> Channel:
        """Authenticate an incoming source (server side).

        ``sock`` is a listening socket (one connection is accepted, waiting at
        most ``timeout`` seconds, None for ever) or a connection already
        accepted.  ``io_timeout`` bounds the handshake and is the channel's default.
        ``tls``: only a source in TLS with a certificate of our CA gets to the handshake.
        """
        _token_bytes(token)
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return cls(sock, token, Role.SERVER, timeout=io_timeout, tls=tls)
        previous = sock.gettimeout()
        sock.settimeout(timeout)
        try:
            conn, addr = sock.accept()
        except TimeoutError:
            raise WireTimeout(f"no connection within {timeout:g} s") from None
        except OSError as exc:
            raise WireError(f"accepting a connection failed: {exc.strerror or exc}") from None
        finally:
            sock.settimeout(previous)
        return cls(conn, token, Role.SERVER, timeout=io_timeout, peer=_address(addr), tls=tls)

    # -- state ---------------------------------------------------------------

    @property
    def who(self) -> str:
        """The peer as named in messages."""
        return f"peer {self.peer}" if self.peer else "the peer"

    @property
    def tls(self) -> bool:
        """Both sides run in TLS, which protects the frames instead of the wire's own sealing."""
        return self._tls is not None and self._peer_tls

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> str | None:
        """Why the channel cannot be used any more (an earlier error), or None."""
        return self._broken

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the connection (idempotent).  Sends nothing: say goodbye with a message first."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _usable(self) -> None:
        if self._closed:
            raise WireError(f"the connection to {self.who} is closed")
        if self._broken is not None:
            raise WireError(f"the connection to {self.who} is unusable after an earlier error: {self._broken}")

    def _break(self, exc: WireError) -> WireError:
        """Mark the stream unusable (out of sync, or closed): return ``exc`` to raise."""
        if self._broken is None:
            self._broken = exc.message
        return exc

    def _deadline(self, timeout: float | None) -> _Deadline:
        return _Deadline.start(self.timeout if timeout is None else timeout)

    # -- messages ------------------------------------------------------------

    def send(self, msg: Mapping[str, Any], *, timeout: float | None = None) -> None:
        """Send one message (a map with a str ``type``).

        ``timeout`` None uses :attr:`timeout`; ``math.inf`` waits for ever.
        A message without a str ``type`` is a TypeError, one too large for a
        frame a ValueError (bugs, not the peer's doing).
        """
        payload = _pack(msg)
        self._usable()
        with self._send_lock:
            self._send_frame(payload, self._deadline(timeout))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Receive the next message.

        ``timeout`` None uses :attr:`timeout`; 0 takes only what has already
        arrived; ``math.inf`` waits for ever.  An ``error`` frame from the peer
        is raised as :class:`PeerError`.  A timeout before the first byte of a
        frame leaves the channel usable; every other failure breaks it.
        """
        self._usable()
        with self._recv_lock:
            return self._recv_message(self._deadline(timeout), MAX_FRAME)

    def expect(self, type_: str, timeout: float | None = None) -> dict[str, Any]:
        """Receive the next message, which must be of ``type_``; else tell the peer and fail."""
        msg = self.recv(timeout)
        if msg["type"] != type_:
            got = _printable(msg["type"])
            self.send_error(f"protocol error: expected a {type_!r} message, received {got!r}")
            raise self._break(WireError(f"protocol error: expected a {type_!r} message from {self.who}, got {got!r}"))
        return msg

    def send_error(self, message: str) -> None:
        """Tell the peer why we fail (best effort: never raises, waits at most a second)."""
        if self._closed or self._broken is not None:
            return
        wait = min(_ERROR_SEND_TIMEOUT, math.inf if self.timeout is None else self.timeout)
        if not self._send_lock.acquire(timeout=wait):
            return  # another thread is stuck sending: the peer will see the connection drop instead
        try:
            self._send_frame(_pack({"type": "error", "message": _printable(message)}), _Deadline.start(wait))
        except (WireError, ValueError):
            pass
        finally:
            self._send_lock.release()

    # -- frames --------------------------------------------------------------

    def _send_frame(self, payload: bytes, deadline: _Deadline) -> None:
        """Seal (once authenticated), prefix and send one frame; the caller holds the send lock."""
        length = len(payload) + (SEAL_TAG_SIZE if self._send_seal is not None else 0)
        if length > MAX_FRAME:
            raise ValueError(f"a {length}-byte frame exceeds the limit of {MAX_FRAME} bytes")
        header = _HEADER.pack(length)
        body = self._send_seal.seal(payload, header) if self._send_seal is not None else payload
        self._write([header, body], deadline)
        self.frames_sent += 1

    def _write(self, parts: list[bytes], deadline: _Deadline) -> None:
        views = [memoryview(p) for p in parts if p]
        sent = 0
        tls = self._tls
        while views or (tls is not None and tls.unsent):
            try:
                n = tls.send(views) if tls is not None else self._sock.sendmsg(views, (), socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                if self._wait(self._wpoll, deadline):
                    continue
                exc: WireError = WireTimeout(
                    f"sending to {self.who} timed out after {deadline.timeout:g} s (is it still reading?)"
                )
                if sent:
                    raise self._break(exc) from None
                raise exc from None
            except OSError as err:
                peer_error = self._peer_error_after_reset() if err.errno in (errno.EPIPE, errno.ECONNRESET) else None
                raise self._break(peer_error or self._io_error("sending to", err)) from None
            except WireError as err:  # TLS failed
                raise self._break(err) from None
            sent += n
            self.bytes_sent += n
            while n:
                if n >= views[0].nbytes:
                    n -= views[0].nbytes
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0

    def _wait(self, poller: select.poll, deadline: _Deadline) -> bool:
        """Wait until the socket is ready for ``poller``'s direction; False when the deadline passed."""
        while True:
            ms = deadline.wait_ms()
            if ms is None:
                return False
            if poller.poll(ms):
                return True

    def _io_error(self, doing: str, err: OSError) -> WireError:
        if err.errno in (errno.EPIPE, errno.ECONNRESET):
            return WireError(f"connection {'reset' if err.errno == errno.ECONNRESET else 'closed'} by {self.who}")
        return WireError(f"{doing} {self.who} failed: {err.strerror or err}")

    def _hint_refused(self) -> str | None:
        """Why a destination may end a connection before its hello: it does not admit us."""
        if self.version == 0 and self.role is Role.CLIENT:
            return "the destination ended the connection before its handshake: does its receive --allow admit this host?"
        return None

    def _peer_error_after_reset(self) -> PeerError | None:
        """The reason a peer sent just before it dropped the connection under our feet, if it is still readable.

        A receiver that fails closes with our data unread, which resets the
        connection: our send then fails with EPIPE, while its error frame may
        already wait in our receive queue.
        """
        if not self._recv_lock.acquire(blocking=False):
            return None  # another thread is receiving: it will see the error frame
        try:
            for _ in range(64):
                self._recv_message(_Deadline.start(0.5), MAX_FRAME)
        except PeerError as exc:
            return exc
        except (WireError, ValueError):
            pass
        finally:
            self._recv_lock.release()
        return None

    def _fill(self, view: memoryview, deadline: _Deadline, frame_pos: int, frame_size: int | None) -> None:
        """Read exactly ``len(view)`` bytes, which start at ``frame_pos`` of a frame of ``frame_size`` bytes."""
        got = 0
        while got < len(view):
            try:
                n = self._tls.recv_into(view[got:]) if self._tls is not None else self._sock.recv_into(view[got:])
            except (BlockingIOError, InterruptedError):
                if self._wait(self._rpoll, deadline):
                    continue
                if frame_pos + got == 0:  # nothing consumed: the stream is still in step
                    raise WireTimeout(f"no message from {self.who} within {deadline.timeout:g} s") from None
                raise self._break(
                    WireTimeout(f"{self.who} stalled in the middle of a frame for {deadline.timeout:g} s")
                ) from None
            except OSError as err:
                exc = self._io_error("receiving from", err)
                if err.errno == errno.ECONNRESET:
                    exc.hint = self._hint_refused()
                raise self._break(exc) from None
            except WireError as err:  # TLS failed (in TLS 1.3, also: the peer refused our certificate)
                raise self._break(err) from None
            if n == 0:
                at = frame_pos + got
                if at == 0:
                    raise self._break(WireError(f"connection closed by {self.who}", hint=self._hint_refused()))
                of = f" of {frame_size}" if frame_size is not None else ""
                raise self._break(
                    WireError(f"connection closed by {self.who} in the middle of a frame ({at}{of} bytes received)")
                )
            got += n
            self.bytes_received += n

    def _recv_frame(self, deadline: _Deadline, limit: int) -> bytearray:
        """The body of the next frame (map, plus the tag once authenticated)."""
        header = bytearray(_HEADER.size)
        self._fill(memoryview(header), deadline, 0, None)
        (length,) = _HEADER.unpack(header)
        if length > limit:
            if self._recv_seal is None and header[0] == 0x16 and header[1] == 3:  # a TLS handshake record
                raise self._break(WireError(f"{self.who} speaks TLS and this side does not (--tls on one side only?)",
                                            hint="give --tls, and its certificate files, on both sides or neither"))
            if self._recv_seal is None:
                raise self._break(
                    WireError(
                        f"{self.who} did not answer with a ckpt handshake (a {length}-byte frame): "
                        "is it a ckpt migration endpoint?"
                    )
                )
            raise self._break(
                WireError(f"{self.who} announced a {length}-byte frame, over the limit of {limit} (corrupt stream?)")
            )
        if self._recv_seal is not None and length <= SEAL_TAG_SIZE:
            raise self._break(WireError(f"{self.who} sent a {length}-byte frame, too short to hold its tag"))
        body = bytearray(length)
        self._fill(memoryview(body), deadline, _HEADER.size, _HEADER.size + length)
        self.frames_received += 1
        return body

    def _recv_message(self, deadline: _Deadline, limit: int) -> dict[str, Any]:
        body = self._recv_frame(deadline, limit)
        payload: bytes | bytearray = body
        if self._recv_seal is not None:
            opened = self._recv_seal.open(body, _HEADER.pack(len(body)))
            if opened is None:
                self.send_error("a frame failed authentication (altered in transit?)")
                raise self._break(
                    WireError(
                        f"a frame from {self.who} failed authentication: altered, replayed or injected in transit"
                    )
                )
            payload = opened
        try:
            msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:  # noqa: BLE001 - msgpack raises many kinds for garbage
            raise self._break(WireError(f"undecodable frame from {self.who}: {exc}")) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise self._break(WireError(f"{self.who} sent a frame that is not a message (no str 'type')"))
        if msg["type"] == "error":
            text = _printable(msg.get("message", "(no reason given)"))
            raise PeerError(f"{self.who} reported: {text}", peer_message=text)
        return msg

    # -- handshake -----------------------------------------------------------

    def _refuse(self, exc: WireError, tell_peer: str) -> WireError:
        self.send_error(tell_peer)
        return self._break(exc)

    def _hello(self) -> dict[str, Any]:
        """Our ``hello`` (a test's subclass may send an older ckpt's)."""
        oldest, newest = _speaks(self._protocol_versions)
        return {
            "type": "hello",
            "protocol": PROTOCOL_NAME,
            "version": oldest,
            "max_version": newest,
            "role": self.role.value,
            "nonce": secrets.token_bytes(NONCE_SIZE),
            "software": ckpt.__version__,
            **({"tls": True} if self._tls is not None else {}),
        }

    def _handshake(self, token: bytes, deadline: _Deadline) -> None:
        ours = _pack(self._hello())
        self._send_frame(ours, deadline)
        theirs = bytes(self._recv_frame(deadline, MAX_HANDSHAKE_FRAME))
        hello = self._handshake_message(theirs, "hello")
        self._check_hello(hello)
        binding = self._tls.channel_binding() if self.tls and self._tls is not None else b""
        hellos = (ours, theirs) if self.role is Role.CLIENT else (theirs, ours)
        transcript = _transcript(*hellos, binding)
        expected_proof = _proof(token, self.role.other, transcript)
        refused = AuthError(f"{self.who} failed authentication (wrong token?)", hint=_TOKEN_HINT)
        if self.role is Role.CLIENT:
            self._send_frame(_pack({"type": "auth", "proof": _proof(token, Role.CLIENT, transcript)}), deadline)
            try:
                reply = self._handshake_message(bytes(self._recv_frame(deadline, MAX_HANDSHAKE_FRAME)), "auth")
            except PeerError as exc:
                raise self._break(
                    AuthError(f"{self.who} refused our authentication (wrong token?)", hint=_TOKEN_HINT)
                ) from exc
            if not hmac.compare_digest(self._proof_of(reply), expected_proof):
                raise self._refuse(refused, "authentication failed (wrong token?)")
            self._start_session(token, transcript)
            self._send_frame(_pack({"type": "auth_ok"}), deadline)  # the first sealed frame
        else:
            request = self._handshake_message(bytes(self._recv_frame(deadline, MAX_HANDSHAKE_FRAME)), "auth")
            if not hmac.compare_digest(self._proof_of(request), expected_proof):
                raise self._refuse(refused, "authentication failed (wrong token?)")
            self._send_frame(_pack({"type": "auth", "proof": _proof(token, Role.SERVER, transcript)}), deadline)
            self._start_session(token, transcript)
            msg = self._recv_message(deadline, MAX_HANDSHAKE_FRAME)
            if msg["type"] != "auth_ok":
                raise self._break(WireError(f"{self.who} sent {_printable(msg['type'])!r} instead of 'auth_ok'"))

    def _handshake_message(self, body: bytes, type_: str) -> dict[str, Any]:
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
        except Exception:  # noqa: BLE001 - msgpack raises many kinds for garbage
            raise self._break(
                WireError(f"{self.who} did not answer with a ckpt handshake: is it a ckpt migration endpoint?")
            ) from None
        if not isinstance(msg, dict):
            raise self._break(WireError(f"{self.who} sent a malformed handshake frame"))
        if msg.get("type") == "error":
            text = _printable(msg.get("message", "(no reason given)"))
            raise self._break(PeerError(f"{self.who} refused the connection: {text}", peer_message=text))
        if msg.get("type") != type_:
            problem = (
                "did not answer with a ckpt hello: is it a ckpt migration endpoint?"
                if type_ == "hello"
                else f"sent {_printable(msg.get('type'))!r} where the handshake expects {type_!r}"
            )
            raise self._refuse(WireError(f"{self.who} {problem}"), f"protocol error: expected {type_!r} in the handshake")
        return msg

    def _check_hello(self, hello: dict[str, Any]) -> None:
        if hello.get("protocol") != PROTOCOL_NAME:
            raise self._refuse(
                WireError(f"{self.who} is not a ckpt migration endpoint (protocol {_printable(hello.get('protocol'))})"),
                f"this is a {PROTOCOL_NAME} endpoint",
            )
        software = hello.get("software")
        self.peer_software = _printable(software)[:40] if isinstance(software, str) else ""
        theirs = f" (ckpt {self.peer_software})" if self.peer_software else ""
        oldest, newest = _speaks(self._protocol_versions)
        ours = _span(oldest, newest)
        low, high = hello.get("version"), hello.get("max_version", hello.get("version"))
        if not all(type(v) is int and 0 < v < 1 << 16 for v in (low, high)) or low > high:  # noqa: E721 - no bool
            raise self._refuse(
                WireError(f"{self.who} sent a malformed hello (protocol version {_printable(low)}..{_printable(high)})"),
                "malformed hello",
            )
        if max(low, oldest) > min(high, newest):
            raise self._refuse(
                WireError(
                    f"{self.who} speaks migration protocol {_span(low, high)}{theirs}, "
                    f"this ckpt {ckpt.__version__} speaks {ours}",
                    hint="upgrade the older side: this ckpt seals every frame (protocol 3) and no longer speaks "
                         "the protocols that sent memory in clear",
                ),
                f"protocol version mismatch: this side (ckpt {ckpt.__version__}) speaks {ours}",
            )
        self.version = min(high, newest)
        if hello.get("role") != self.role.other.value:
            raise self._refuse(
                WireError(
                    f"{self.who} introduced itself as {_printable(hello.get('role'))!r}, "
                    f"expected {self.role.other.value!r} (two sources or two destinations?)"
                ),
                f"protocol error: both sides are {self.role.value}s",
            )
        nonce = hello.get("nonce")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise self._refuse(WireError(f"{self.who} sent a malformed hello"), "malformed hello")
        self._peer_tls = hello.get("tls") is True

    def _proof_of(self, msg: dict[str, Any]) -> bytes:
        proof = msg.get("proof")
        if not isinstance(proof, bytes) or len(proof) != TAG_SIZE:
            raise self._refuse(WireError(f"{self.who} sent a malformed authentication"), "malformed authentication")
        return proof

    def _start_session(self, token: bytes, transcript: bytes) -> None:
        if self.tls:
            return  # TLS protects every frame: no second AES-GCM (module docstring, "TLS")
        to_server, to_client = _direction_keys(token, transcript)
        send_key, recv_key = (to_server, to_client) if self.role is Role.CLIENT else (to_client, to_server)
        self._send_seal, self._recv_seal = _Sealer(send_key), _Sealer(recv_key)

    # -- directory transfer --------------------------------------------------

    def send_dir(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        compress_level: int | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> DirTransfer:
        """Stream the regular files of directory ``path``, to be stored as ``name`` by :meth:`recv_dir`.

        ``compress_level`` compresses chunks with zstd on the wire (only those it
        makes smaller: page data of an image is usually compressed already).
        Does not wait for the receiver to confirm: the caller's protocol does.
        On a local failure the peer is told, so it drops what it received.
        """
        where = os.fspath(path)
        problem = _name_problem(name)
        if problem is not None:
            raise UsageError(f"cannot send {where} as {name!r}: the name {problem}")
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk size {chunk_size} not in 1..{MAX_CHUNK}")
        files = _list_dir(where)
        started = time.monotonic()
        wire_before = self.bytes_sent
        self.send({"type": "dir", "name": name, "files": [[f.name, f.size] for f in files]})
        compressor = zstandard.ZstdCompressor(level=compress_level) if compress_level is not None else None
        buffer = bytearray(chunk_size)
        try:
            for f in files:
                self._send_file(os.path.join(where, f.name), f.size, buffer, compressor)
        except BaseException as exc:
            if not isinstance(exc, PeerError):
                reason = f": {exc}" if isinstance(exc, CkptError) else ""
                self.send_error(f"the source failed to send {name}{reason}")
            # The peer is in the middle of the directory: nothing else can follow on this stream.
            self._break(WireError(f"sending {name} failed"))
            raise
        total = sum(f.size for f in files)
        self.send({"type": "dir_end", "files": len(files), "bytes": total})
        return DirTransfer(name, len(files), total, self.bytes_sent - wire_before, time.monotonic() - started)

    def _send_file(
        self, path: str, size: int, buffer: bytearray, compressor: zstandard.ZstdCompressor | None
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise CkptError(f"{path}: cannot open: {exc.strerror or exc}") from None
        with open(fd, "rb", buffering=0) as f:
            left = size
            view = memoryview(buffer)
            while True:
                try:
                    n = f.readinto(view[: min(len(view), left)] if left else view[:1])
                except OSError as exc:
                    raise CkptError(f"{path}: cannot read: {exc.strerror or exc}") from None
                if left == 0:
                    if n:
                        raise CkptError(f"{path}: grew while being sent (announced {size} bytes)")
                    return
                if not n:
                    raise CkptError(f"{path}: shrank while being sent (announced {size} bytes, {size - left} read)")
                left -= n
                chunk = view[:n]
                if compressor is not None:
                    packed = compressor.compress(chunk)
                    if len(packed) < n:
                        self.send({"type": "chunk", "zstd": packed})
                        continue
                self.send({"type": "chunk", "data": chunk})

    def recv_dir(
        self,
        root: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """Receive a directory sent by :meth:`send_dir` into ``root``; return its final path.

        It is written into a hidden temporary directory under ``root`` (mode
        0700, files 0600), synced, and renamed to ``root/<name>`` only when
        complete; any failure removes it (and tells the peer when the failure is
        ours), so a half-received directory never looks like a complete one.
        ``root/<name>`` must not exist, or be an empty directory.  ``timeout``
        applies to each message; ``max_bytes`` refuses larger directories up front.
        """
        msg = self.expect("dir", timeout)
        base = os.path.abspath(os.fspath(root))
        name = "a directory"
        tmp: str | None = None
        try:
            name, files = self._dir_header(msg)
            final = os.path.join(base, name)
            total = sum(f.size for f in files)
            _check_room(base, final, name, total, max_bytes)
            try:
                tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=base)
            except OSError as exc:
                raise ImageError(base, f"cannot create a temporary directory: {exc.strerror or exc}") from None
            os.chmod(tmp, 0o700)
            decompressor = zstandard.ZstdDecompressor()
            for f in files:
                self._recv_file(tmp, f, timeout, decompressor)
            end = self.expect("dir_end", timeout)
            if field(end, "files", int) != len(files) or field(end, "bytes", int) != total:
                raise WireError(f"{self.who} ended directory {name} with totals that do not match its announcement")
            fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise ImageError(final, "appeared meanwhile; refusing to overwrite it") from None
                raise
            tmp = None
            fsync_dir(base)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            error = exc
            if isinstance(exc, OSError):
                error = CkptError(f"{base}: cannot store {name}: {exc.strerror or exc}")
            if not isinstance(error, PeerError):
                reason = f": {error}" if isinstance(error, CkptError) else ""
                self.send_error(f"the destination failed to receive {name}{reason}")
            # Whatever the peer still sends of this directory would be taken for the next messages.
            self._break(WireError(f"receiving {name} failed"))
            if error is not exc:
                raise error from None
            raise
        return final

    def _dir_header(self, msg: dict[str, Any]) -> tuple[str, list[DirFile]]:
        name = field(msg, "name", str)
        problem = _name_problem(name)
        if problem is not None:
            raise WireError(f"{self.who} sent a bad directory name {_printable(name)!r}: it {problem}")
        entries = field(msg, "files", list)
        if len(entries) > MAX_DIR_FILES:
            raise WireError(f"{self.who} announced {len(entries)} files, over the limit of {MAX_DIR_FILES}")
        files: list[DirFile] = []
        seen: set[str] = set()
        for entry in entries:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[1], int)
                or isinstance(entry[1], bool)
                or entry[1] < 0
            ):
                raise WireError(f"{self.who} sent a malformed file entry {_printable(entry)} in directory {name}")
            fname, size = entry
            problem = _name_problem(fname)
            if problem is not None:
                raise WireError(f"{self.who} sent a bad file name {_printable(fname)!r} in directory {name}: it {problem}")
            if fname in seen:
                raise WireError(f"{self.who} sent file name {fname!r} twice in directory {name}")
            seen.add(fname)
            files.append(DirFile(fname, size))
        return name, files

    def _recv_file(
        self, tmp: str, f: DirFile, timeout: float | None, decompressor: zstandard.ZstdDecompressor
    ) -> None:
        path = os.path.join(tmp, f.name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            left = f.size
            while left:
                data = self._chunk_data(self.expect("chunk", timeout), f, left, decompressor)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                left -= len(data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _chunk_data(
        self, msg: dict[str, Any], f: DirFile, left: int, decompressor: zstandard.ZstdDecompressor
    ) -> bytes:
        """The bytes of one ``chunk`` of file ``f`` (``left`` bytes still to come), checked.

        Raises a WireError without breaking the channel: recv_dir tells the peer, then breaks it.
        """
        if "zstd" in msg:
            packed = field(msg, "zstd", bytes)
            try:
                size = zstandard.frame_content_size(packed)
            except zstandard.ZstdError:
                size = -1
            if not 0 < size <= min(left, MAX_CHUNK):  # checked before decompressing: bounded memory
                raise WireError(f"{self.who} sent a zstd chunk for {f.name} of bad or unknown size {size}")
            try:
                data = decompressor.decompress(packed, allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise WireError(f"{self.who} sent a corrupt zstd chunk for {f.name}: {exc}") from None
            if len(data) != size:
                raise WireError(f"{self.who} sent a zstd chunk for {f.name} that lies about its size")
            return data
        data = field(msg, "data", bytes)
        if not data or len(data) > MAX_CHUNK:
            raise WireError(f"{self.who} sent a chunk of {len(data)} bytes for {f.name}")
        if len(data) > left:
            raise WireError(f"{self.who} sent more data for {f.name} than the {f.size} bytes it announced")
        return data


def _list_dir(path: str) -> list[DirFile]:
    """The files of an image directory to send, by name; anything but plain regular files is refused."""
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        files: list[DirFile] = []
        for e in entries:
            if not e.is_file(follow_symlinks=False):
                raise ImageError(path, f"{e.name} is not a regular file (an image directory holds only files)")
            problem = _name_problem(e.name)
            if problem is not None:
                raise ImageError(path, f"file name {e.name!r} cannot be sent: it {problem}")
            files.append(DirFile(e.name, e.stat(follow_symlinks=False).st_size))
    except OSError as exc:
        raise ImageError(path, f"cannot read the directory: {exc.strerror or exc}") from None
    if len(files) > MAX_DIR_FILES:
        raise ImageError(path, f"holds {len(files)} files, more than the {MAX_DIR_FILES} a transfer allows")
    return files


def _check_room(root: str, final: str, name: str, size: int, max_bytes: int | None) -> None:
    """Refuse before writing anything: no root, a destination in the way, too much data."""
    if not os.path.isdir(root):
        raise ImageError(root, "is not a directory")
    if os.path.lexists(final) and (os.path.islink(final) or not os.path.isdir(final) or os.listdir(final)):
        raise ImageError(final, "already exists; refusing to overwrite it")
    if max_bytes is not None and size > max_bytes:
        raise CkptError(f"{name} holds {size} bytes, over the limit of {max_bytes}")
    try:
        st = os.statvfs(root)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise CkptError(f"{root}: not enough free space for {name} ({size} bytes needed, {free} available)")
