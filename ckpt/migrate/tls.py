"""TLS 1.3 with a certificate on both sides, under the migration channel (``--tls``, CRIU's flag names).

For sites that have a PKI: ``ckpt migrate --tls`` and ``ckpt receive --tls``
wrap their TCP connection in TLS 1.3 (no older version is offered or
accepted) before the first frame of :mod:`ckpt.migrate.wire`.  Each side
presents its certificate (``--tls-cert``, ``--tls-key``) and accepts only a
peer whose certificate chains to the CA of ``--tls-cacert``: the receiver
requires one from every source (mutual authentication).  Without the flags
the files are CRIU's default paths (:data:`DEFAULT_CACERT` …).

Names: as CRIU does, the source checks that the destination's certificate
names the address it connects to (``--to``: a DNS name or an IP address
subjectAltName, as HTTPS checks a server), unless ``--tls-no-cn-verify``.
The receiver checks no name in a source's certificate: sources connect from
addresses it was never told of, and ``receive --allow`` is what limits those.

The token challenge still runs inside TLS, so a peer needs both a certificate
from the CA and the token.  TLS then replaces the wire's own AES-GCM sealing
of each frame (AES-GCM twice costs half the throughput: bench ``limit.tls``);
the token proofs are bound to the TLS session (its ``tls-unique`` channel
binding), so whoever holds a certificate but not the token cannot relay a
migration between two TLS sessions it terminates (see wire.py).

The TLS state machine runs over memory buffers (``ssl.MemoryBIO``), not an
``ssl.SSLSocket``: the channel keeps its own non-blocking socket and poll
loops, ciphertext goes out with ``sendmsg`` as before, and one lock
serialises the calls into OpenSSL, which must not see one connection from two
threads at once (the channel sends on one thread while it receives on another).
Keys are read once through :func:`ckpt.secretfile.read_secret_file` (0600, ours
or root's) and handed to OpenSSL through a memfd, so the key used is the key checked.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from ..secretfile import read_secret_file
from .wire import _HEADER, AuthError, WireError, WireTimeout, _pack

__all__ = ["DEFAULT_CACERT", "DEFAULT_CERT", "DEFAULT_KEY", "TlsConfig", "TlsStream", "load"]

#: CRIU's default files (criu.org/TLS), used when ``--tls`` comes without the file flags.
DEFAULT_CACERT = "/etc/pki/CA/cacert.pem"
DEFAULT_CERT = "/etc/pki/criu/cert.pem"
DEFAULT_KEY = "/etc/pki/criu/private/key.pem"
#: Plaintext bytes encrypted per call: bounds the ciphertext held and the time the OpenSSL lock is held.
_CHUNK = 256 << 10
#: A PEM file larger than this is not a certificate (chain) or a key.
_MAX_PEM = 1 << 20
#: The first byte of a TLS record that carries a handshake (RFC 8446 §5.1: ContentType handshake).
_TLS_HANDSHAKE_RECORD = 0x16
#: OpenSSL's verify codes (x509_vfy.h) for a certificate that names another host or address.
_NAME_MISMATCH = (62, 64)
_TLS_HINT = "both sides need --tls, with certificates signed by the CA the other side trusts (--tls-cacert)"


@dataclass(frozen=True)
class TlsConfig:
    """One side's TLS: its context (TLS 1.3 only, certificate required from the peer) and role."""

    context: ssl.SSLContext
    server_side: bool

    def wrap(self, sock: socket.socket, server_hostname: str | None,
             wait: Callable[[bool], bool], who: str) -> TlsStream:
        """Run the TLS handshake over the non-blocking ``sock``; the stream to send and receive through.

        ``wait(readable)`` waits for the socket (False: the deadline passed); ``who`` names the peer.
        """
        stream = TlsStream(sock, self, server_hostname, who)
        stream.handshake(wait)
        return stream


def load(*, server_side: bool, cacert: str | None, cert: str | None, key: str | None,
         check_hostname: bool = True) -> TlsConfig:
    """The TLS of ``ckpt receive`` (``server_side``) or ``ckpt migrate`` from its files; UsageError naming a bad one."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cacert, cert, key = cacert or DEFAULT_CACERT, cert or DEFAULT_CERT, key or DEFAULT_KEY
    # The key first: a key file others may read is refused before anything else is looked at.
    key_pem = read_secret_file(key, "TLS private key (--tls-key)", max_size=_MAX_PEM,
                               missing_hint="give the private key of --tls-cert with --tls-key (mode 0600)")
    ca_pem = read_secret_file(cacert, "TLS CA certificate (--tls-cacert)", max_size=_MAX_PEM, secret=False,
                              missing_hint="give the CA that signs both sides' certificates with --tls-cacert")
    cert_pem = read_secret_file(cert, "TLS certificate (--tls-cert)", max_size=_MAX_PEM, secret=False,
                                missing_hint="give this host's certificate with --tls-cert")
    for path, pem, what in ((cacert, ca_pem, "CA certificate"), (cert, cert_pem, "certificate")):
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise UsageError(f"{path}: not a PEM {what} (-----BEGIN CERTIFICATE-----)") from None
    try:
        load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise UsageError(f"{key}: the TLS private key is encrypted with a passphrase; ckpt takes a plain one "
                         "(protected by its mode 0600)") from None
    except (ValueError, Exception) as exc:  # noqa: BLE001 - cryptography's errors for garbage vary
        raise UsageError(f"{key}: not a PEM private key ({exc})") from None

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = check_hostname and not server_side
    ctx.verify_mode = ssl.CERT_REQUIRED  # on the receiver: a source without a certificate is refused
    if server_side:
        ctx.num_tickets = 0  # no session resumption: nothing to send after the handshake
    try:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{cacert}: cannot use it as the TLS CA certificate: {_reason(exc)}") from None
    fd = os.memfd_create("ckpt-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        if getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH":
            raise UsageError(f"{key}: this private key is not the key of the certificate {cert}") from None
        raise UsageError(f"{cert}: cannot use it with the key {key}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    return TlsConfig(ctx, server_side)


class TlsStream:
    """TLS over a non-blocking socket through memory buffers; the channel's transport once wrapped.

    :meth:`send` and :meth:`recv_into` behave like the socket calls they stand
    for (BlockingIOError: wait for the socket and call again), on plaintext.
    """

    def __init__(self, sock: socket.socket, config: TlsConfig, server_hostname: str | None, who: str) -> None:
        self._sock = sock
        self._server_side = config.server_side
        self._who = who
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = config.context.wrap_bio(self._in, self._out, server_side=config.server_side,
                                            server_hostname=None if config.server_side else server_hostname)
        self._lock = threading.Lock()  # one thread in OpenSSL at a time
        self._backlog: list[memoryview] = []  # ciphertext the socket has not taken yet (the sender's)
        self._rbuf = bytearray(_CHUNK)  # what the socket gave, on its way into OpenSSL (the receiver's)
        self._rview = memoryview(self._rbuf)

    # -- the handshake -------------------------------------------------------

    def handshake(self, wait: Callable[[bool], bool]) -> None:
        first = True
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as exc:
                self._flush_quietly()  # our alert tells the peer why
                raise self._refusal(exc) from None
            self._flush(wait)
            if done:
                return
            if not wait(True):
                raise WireTimeout(f"the TLS handshake with {self._who} did not finish in time")
            try:
                data = self._sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                raise WireError(f"the TLS handshake with {self._who} failed: {exc.strerror or exc}",
                                hint=self._hint_closed()) from None
            if not data:
                raise WireError(f"connection closed by {self._who} during the TLS handshake", hint=self._hint_closed())
            if first and data[0] != _TLS_HANDSHAKE_RECORD:
                raise self._plain_peer()
            first = False
            with self._lock:
                self._in.write(data)

    def _hint_closed(self) -> str:
        if self._server_side:
            return _TLS_HINT
        return f"{_TLS_HINT}; and the receiver's --allow must admit this host"

    def _plain_peer(self) -> WireError:
        """The peer sent a ckpt frame in clear: it runs without --tls."""
        if self._server_side:
            # A plain source reads its handshake in clear: tell it, in a frame it understands.
            text = "this destination takes only TLS connections (ckpt receive --tls): run ckpt migrate with --tls"
            frame = _pack({"type": "error", "message": text})
            try:
                self._sock.send(_HEADER.pack(len(frame)) + frame, socket.MSG_NOSIGNAL)
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return AuthError(f"{self._who} did not start TLS: a source without --tls?", hint=_TLS_HINT)
        return AuthError(f"{self._who} does not speak TLS: a ckpt receive without --tls?", hint=_TLS_HINT)

    def _refusal(self, exc: ssl.SSLError) -> WireError:
        """A failed handshake, in words: which side refused what."""
        peer = f"the {'source' if self._server_side else 'destination'} ({self._who})"
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or _reason(exc)
            if exc.verify_code in _NAME_MISMATCH:
                return AuthError(f"the TLS certificate of {peer} does not name the address connected to: {why}",
                                 hint="its certificate needs that name or IP address as a subjectAltName "
                                      "(or migrate --tls-no-cn-verify)")
            return AuthError(f"the TLS certificate of {peer} was refused: {why}",
                             hint="both certificates must be signed by the CA of --tls-cacert")
        reason = getattr(exc, "reason", None) or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return AuthError(f"{peer} presented no TLS certificate", hint=_TLS_HINT)
        if "ALERT" in reason:
            return AuthError(f"{peer} refused the TLS connection ({_alert(reason)})", hint=_TLS_HINT)
        if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
            return AuthError(f"{peer} does not speak TLS 1.3", hint=_TLS_HINT)
        return AuthError(f"the TLS handshake with {self._who} failed: {_reason(exc)}", hint=_TLS_HINT)

    # -- data ----------------------------------------------------------------

    @property
    def unsent(self) -> bool:
        """Ciphertext is waiting for the socket (call :meth:`send` with nothing more until it is gone)."""
        if self._backlog:
            return True
        with self._lock:
            return self._out.pending > 0

    def send(self, views: Sequence[memoryview]) -> int:
        """Encrypt up to :data:`_CHUNK` bytes of ``views`` and return how many were taken (0: only flushed).

        Ciphertext the socket does not take at once is kept and goes first next
        time; BlockingIOError when the socket takes nothing at all.
        """
        self._push()
        if self._backlog:
            raise BlockingIOError
        taken = 0
        with self._lock:
            for v in views:
                part = v[: _CHUNK - taken]
                try:
                    self._tls.write(part)
                except ssl.SSLError as exc:
                    raise WireError(f"TLS to {self._who} failed: {_reason(exc)}") from None
                taken += len(part)
                if taken >= _CHUNK:
                    break
            self._take_output()
        try:
            self._push()
        except BlockingIOError:
            if not taken:
                raise
        return taken

    def recv_into(self, view: memoryview) -> int:
        """Plaintext into ``view``: its length, 0 at the end of the connection; BlockingIOError: nothing yet."""
        got = 0
        while True:
            with self._lock:
                try:
                    while got < len(view):  # record by record (16 KiB at most each)
                        got += self._tls.read(len(view) - got, view[got:])
                    return got
                except ssl.SSLWantReadError:
                    if got:
                        return got
                except ssl.SSLZeroReturnError:
                    return got
                except ssl.SSLError as exc:
                    # In TLS 1.3 the client has finished its handshake before the server checked its
                    # certificate: the refusal comes as an alert on the first read.
                    if "ALERT" in (getattr(exc, "reason", None) or ""):
                        raise self._refusal(exc) from None
                    raise WireError(f"TLS from {self._who} failed: {_reason(exc)} (altered in transit?)") from None
            n = self._sock.recv_into(self._rbuf)  # BlockingIOError: the caller waits for the socket
            if not n:
                return 0
            with self._lock:
                self._in.write(self._rview[:n])

    def _take_output(self) -> None:
        """Move OpenSSL's output into the backlog (the lock held)."""
        if self._out.pending:
            self._backlog.append(memoryview(self._out.read()))

    def _push(self) -> None:
        """Hand the backlog to the socket until it is empty or the socket is full (BlockingIOError)."""
        if not self._backlog:
            with self._lock:
                self._take_output()  # e.g. an answer the receiving thread's read left
        while self._backlog:
            n = self._sock.sendmsg(self._backlog, (), socket.MSG_NOSIGNAL)
            while n:
                if n >= self._backlog[0].nbytes:
                    n -= self._backlog.pop(0).nbytes
                else:
                    self._backlog[0] = self._backlog[0][n:]
                    n = 0

    def _flush(self, wait: Callable[[bool], bool]) -> None:
        while True:
            try:
                self._push()
                return
            except (BlockingIOError, InterruptedError):
                if not wait(False):
                    raise WireTimeout(f"the TLS handshake with {self._who} did not finish in time") from None
            except OSError as exc:
                raise WireError(f"the TLS handshake with {self._who} failed: {exc.strerror or exc}",
                                hint=self._hint_closed()) from None

    def _flush_quietly(self) -> None:
        try:
            self._push()
        except OSError:
            pass

    def channel_binding(self) -> bytes:
        """The session's ``tls-unique`` value: the same on both ends of one TLS session, different on any other."""
        with self._lock:
            binding = self._tls.get_channel_binding("tls-unique")
        if not binding:
            raise WireError(f"the TLS session with {self._who} has no channel binding")
        return binding


def _reason(exc: Exception) -> str:
    """OpenSSL's reason, without the source file position CPython appends."""
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(exc.args[1] if len(exc.args) > 1 else exc)


def _alert(reason: str) -> str:
    """``TLSV1_ALERT_UNKNOWN_CA`` → ``alert: unknown ca``."""
    return "alert: " + reason.split("ALERT_", 1)[1].lower().replace("_", " ")
