"""Images encrypted at rest: every file but the inventory sealed with AES-256-GCM under a key of that image.

An image holds everything its process had in memory (keys, passwords, session
tokens); ``--encrypt-key FILE`` keeps those bytes unreadable, and unchangeable,
to whoever can read or write the image directory but not the key file.

* ``ckpt keygen --encryption FILE`` writes a key file (mode 0600, never
  overwritten): one line, ``ckpt-image-key-1 `` and 64 hex digits (32 random
  bytes).  It is read with :func:`ckpt.secretfile.read_secret_file` (0600,
  owned by root or the user), never taken from the command line.
* Keys, all HKDF-SHA256 of the key file's 32 bytes (``K``):

  - key id = HKDF(K, info ``"ckpt image key id 1"``)[:8]: names the key in the
    inventory and in messages (it reveals nothing of K);
  - image key = HKDF(K, salt = the inventory's 16 random salt bytes, info =
    ``"ckpt image key 1\\0"`` + image id): a new one for every image written, even
    one whose id is pinned (tests, a merge);
  - file key = HKDF(image key, info ``"ckpt file key 1\\0"`` + file name): one
    per file of the image; MAC key = HKDF(image key, info ``"ckpt inventory mac 1"``).

* A pages file's chunk ``i`` (the zstd frame, or the raw pages) is sealed under
  its file key with nonce ``i`` (96-bit big-endian) and associated data
  ``"ckpt chunk 1\\0"`` + file name + ``\\0`` + ``i`` (8 bytes): a chunk moved to
  another index, file or image does not open.  The pagemap's chunk table gives
  the sealed lengths (16 bytes of tag each) and the CRC-32 of the sealed bytes.
* A record file keeps its 12-byte header in clear (with :data:`framing.SEALED`
  set in its version word); what follows — the records and end marker a plain
  file has — is cut into segments of ``segment_size`` bytes, segment ``i`` sealed
  with nonce ``i`` and associated data ``"ckpt records 1\\0"`` + name + ``\\0`` +
  ``i`` + a byte saying whether it is the last (a file cut at a segment boundary
  does not open).  The end marker inside covers the header too.
* ``inventory.img`` stays in clear — kind, parent link, pids, file names, sizes
  and SHA-256 of the stored (sealed) bytes, and the ``encryption`` record (cipher,
  key id, salt) — so ``show`` can name the key an image needs, a signature
  (``--sign-key``) covers the sealed bytes, and a chain is walked without
  decrypting.  ``inventory.mac`` (``CKPTMAC1`` + HMAC-SHA256 under the MAC key of
  the inventory's bytes) makes it as unchangeable as the rest for a holder of the key.

Nonces never repeat under one key: each file has its own key, each chunk or
segment of a file its own index, and each image its own random salt.

Policy: with ``--encrypt-key`` every image a command opens must be encrypted
with that key (a plain image in the chain is refused: nothing the key holder did
not write goes in), and every image it writes is; without it, an encrypted
image is refused naming the key id it needs.  :func:`note_image` applies it
where :meth:`ckpt.image.reader.Image.open` reads an inventory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import CorruptImage, ImageError, UsageError
from ..secretfile import read_secret_file
from . import framing
from .signing import _write_new

__all__ = ["KEY_FILE_PREFIX", "MAC_FILE", "TAG_SIZE", "CIPHER", "EncryptionKey", "FileCipher", "ImageCipher",
           "SealedRecords", "generate_key_file", "load_key", "encrypting", "current_key", "new_image_cipher",
           "note_image", "plain", "chunk_cipher", "nonce", "chunk_aad", "segment_aad", "key_id_of"]

KEY_FILE_PREFIX = b"ckpt-image-key-1 "
MAC_FILE = "inventory.mac"
_MAC_MAGIC = b"CKPTMAC1"
CIPHER = "aes-256-gcm"
#: Bytes the GCM tag adds to every sealed chunk or segment.
TAG_SIZE = 16
#: Plaintext bytes per sealed segment of a record file.
SEGMENT_SIZE = 1 << 20
_MAX_SEGMENT = 64 << 20
_KEY_SIZE = 32
_SALT_SIZE = 16
_MAX_KEY_FILE = 256


def _hkdf(ikm: bytes, info: bytes, salt: bytes | None = None, length: int = _KEY_SIZE) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True)
class EncryptionKey:
    """The 32 bytes of a key file, with its key id (hex in messages) and where it came from."""

    secret: bytes = field(repr=False)
    path: str

    @property
    def key_id(self) -> bytes:
        return key_id_of(self.secret)


def key_id_of(secret: bytes) -> bytes:
    """8 bytes that name a key: HKDF of it under its own label, so they tell nothing of the key."""
    return _hkdf(secret, b"ckpt image key id 1", length=8)


def generate_key_file(path: str | os.PathLike[str]) -> str:
    """Write a new key file at ``path`` (0600, O_EXCL: never over an existing file); its path."""
    where = os.fspath(path)
    if os.path.lexists(where):
        raise UsageError(f"{where} already exists: a key is never overwritten")
    _write_new(where, KEY_FILE_PREFIX + secrets.token_bytes(_KEY_SIZE).hex().encode() + b"\n", 0o600)
    return where


def load_key(path: str | os.PathLike[str]) -> EncryptionKey:
    """The key in the key file ``path`` (``ckpt keygen --encryption``); UsageError saying what is wrong."""
    where = os.fspath(path)
    data = read_secret_file(where, "encryption key file", max_size=_MAX_KEY_FILE,
                            missing_hint="`ckpt keygen --encryption FILE` makes one")
    text = data.strip()
    hexpart = text[len(KEY_FILE_PREFIX):] if text.startswith(KEY_FILE_PREFIX) else b""
    try:
        secret = bytes.fromhex(hexpart.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != _KEY_SIZE:
        raise UsageError(f"{where}: not an image encryption key (`ckpt keygen --encryption FILE` makes one)")
    return EncryptionKey(secret, where)


# -- the key of this run -------------------------------------------------------------------------
#
# One per process, not a contextvar: images are opened and their chunks read on worker threads
# (restore's readers, a receiver's staging thread), which a contextvar would not reach.

_KEY: EncryptionKey | None = None
_LOCK = threading.Lock()
_IMAGES_KEPT = 4096
#: realpath of an image directory -> its cipher (an encrypted image opened with the key), or None (plain).
_IMAGES: dict[str, ImageCipher | None] = {}


@contextlib.contextmanager
def encrypting(key: EncryptionKey | None) -> Iterator[None]:
    """Images written inside this block are encrypted with ``key``, and images read must be (None: neither)."""
    global _KEY
    with _LOCK:
        before, _KEY = _KEY, key
    try:
        yield
    finally:
        with _LOCK:
            _KEY = before
            _IMAGES.clear()


def current_key() -> EncryptionKey | None:
    return _KEY


def nonce(index: int) -> bytes:
    """The GCM nonce of chunk or segment ``index`` of a file (each file has its own key)."""
    return index.to_bytes(12, "big")


def chunk_aad(name: str, index: int) -> bytes:
    return b"ckpt chunk 1\0" + name.encode() + b"\0" + index.to_bytes(8, "big")


def segment_aad(name: str, index: int, last: bool) -> bytes:
    return b"ckpt records 1\0" + name.encode() + b"\0" + index.to_bytes(8, "big") + (b"\1" if last else b"\0")


class FileCipher:
    """The AEAD of one file of an image, bound to its name."""

    def __init__(self, key: bytes, name: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.name = name
        self._aead = AESGCM(key)

    def seal_chunk(self, index: int, data: bytes | bytearray | memoryview) -> bytes:
        return self._aead.encrypt(nonce(index), data, chunk_aad(self.name, index))

    def seal_chunk_into(self, index: int, data: memoryview, out: memoryview) -> None:
        """:meth:`seal_chunk` into ``out`` (``len(data) + TAG_SIZE`` bytes): a buffer reused chunk after chunk."""
        self._aead.encrypt_into(nonce(index), data, chunk_aad(self.name, index), out)

    def open_chunk(self, path: str, index: int, data: bytes | bytearray | memoryview) -> bytes:
        """The plaintext of sealed chunk ``index``; CorruptImage naming ``path`` if it does not authenticate."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._aead.decrypt(nonce(index), data, chunk_aad(self.name, index))
        except InvalidTag:
            raise CorruptImage(path, f"chunk {index}: does not decrypt under this image's key (altered, moved "
                                     "or from another file or image)") from None

    def open_chunk_into(self, path: str, index: int, data: memoryview, out: memoryview) -> None:
        """:meth:`open_chunk` into ``out`` (``len(data) - TAG_SIZE`` bytes, not overlapping ``data``): no new buffer."""
        from cryptography.exceptions import InvalidTag

        try:
            self._aead.decrypt_into(nonce(index), data, chunk_aad(self.name, index), out)
        except InvalidTag:
            raise CorruptImage(path, f"chunk {index}: does not decrypt under this image's key (altered, moved "
                                     "or from another file or image)") from None

    def seal_segment(self, index: int, data: bytes | bytearray | memoryview, last: bool) -> bytes:
        return self._aead.encrypt(nonce(index), data, segment_aad(self.name, index, last))

    def open_records(self, path: str, data: bytes | bytearray | memoryview, segment_size: int) -> bytearray:
        """The plain record file of the sealed one ``data`` (its clear header, then the opened segments)."""
        from cryptography.exceptions import InvalidTag

        view = memoryview(data)
        body = view[framing.HEADER_SIZE:]
        step = segment_size + TAG_SIZE
        count = (len(body) + step - 1) // step
        if count == 0 or len(body) - (count - 1) * step <= TAG_SIZE:
            raise CorruptImage(path, f"sealed body of {len(body)} bytes is no whole number of segments (cut short?)")
        out = bytearray(view[: framing.HEADER_SIZE])
        for index in range(count):
            piece = body[index * step : (index + 1) * step]
            try:
                out += self._aead.decrypt(nonce(index), piece, segment_aad(self.name, index, index == count - 1))
            except InvalidTag:
                raise CorruptImage(path, f"segment {index}: does not decrypt under this image's key (altered, "
                                         "cut short, or from another file or image)") from None
        return out


class ImageCipher:
    """The keys of one encrypted image: per file ciphers and the inventory's MAC."""

    def __init__(self, key: EncryptionKey, image_id: str, salt: bytes, segment_size: int = SEGMENT_SIZE) -> None:
        self.key_id = key.key_id
        self.salt = salt
        self.segment_size = segment_size
        self._image_key = _hkdf(key.secret, b"ckpt image key 1\0" + image_id.encode(), salt=salt)
        self._files: dict[str, FileCipher] = {}

    def file(self, name: str) -> FileCipher:
        cipher = self._files.get(name)
        if cipher is None:
            cipher = self._files[name] = FileCipher(_hkdf(self._image_key, b"ckpt file key 1\0" + name.encode()), name)
        return cipher

    def mac(self, inventory: bytes | bytearray | memoryview) -> bytes:
        key = _hkdf(self._image_key, b"ckpt inventory mac 1")
        return _MAC_MAGIC + hmac.new(key, inventory, hashlib.sha256).digest()

    def to_pb(self):  # noqa: ANN201 - inventory_pb2.Encryption
        from .pb import inventory_pb2

        return inventory_pb2.Encryption(cipher=CIPHER, key_id=self.key_id, salt=self.salt,
                                        segment_size=self.segment_size)

    def write_mac(self, image_dir: str, inventory: bytes) -> str:
        """Write ``inventory.mac`` (0600) for these inventory bytes; its path."""
        path = os.path.join(image_dir, MAC_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, self.mac(inventory))
        finally:
            os.close(fd)
        return path


def new_image_cipher(image_id: str) -> ImageCipher | None:
    """The cipher of a new image (a fresh salt) under this run's key; None when images are written in clear."""
    key = _KEY
    return None if key is None else ImageCipher(key, image_id, secrets.token_bytes(_SALT_SIZE))


class SealedRecords:
    """Stands for a record file's sink: the header goes out in clear, the rest in sealed segments.

    ``sha256_so_far`` is the plaintext's (the end marker inside the sealed body
    covers what a plain file's would); the sink counts the stored bytes, which
    the inventory lists.
    """

    def __init__(self, sink, cipher: FileCipher, segment_size: int) -> None:  # noqa: ANN001 - store._Sink
        self._sink = sink
        self._cipher = cipher
        self._segment = segment_size
        self._sha = hashlib.sha256()
        self._buf = bytearray()
        self._header_left = framing.HEADER_SIZE
        self._index = 0

    @property
    def name(self) -> str:
        return self._sink.name

    @property
    def digest(self):  # noqa: ANN201
        return self._sink.digest

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._sha.update(data)
        view = memoryview(data)
        if self._header_left:
            head, view = view[: self._header_left], view[self._header_left :]
            self._sink.write(head)
            self._header_left -= len(head)
        self._buf += view
        while len(self._buf) > self._segment:  # never the last one: that is sealed by finish()
            self._sink.write(self._cipher.seal_segment(self._index, memoryview(self._buf)[: self._segment], False))
            del self._buf[: self._segment]
            self._index += 1

    def sha256_so_far(self) -> bytes:
        return self._sha.copy().digest()

    def finish(self):  # noqa: ANN201 - FileDigest
        if self._sink.digest is None:
            self._sink.write(self._cipher.seal_segment(self._index, self._buf, True))
            self._buf = bytearray()
        return self._sink.finish()


# -- reading ---------------------------------------------------------------------------------


def _describe(key_id: bytes) -> str:
    return f"key id {key_id.hex()}"


def note_image(path: str, inventory, data: bytes | bytearray | memoryview) -> None:  # noqa: ANN001
    """Apply the policy (module docstring) to the image at ``path`` whose inventory (``data``) was just read.

    Raises ImageError (exit 2) naming the image and the key id it needs; checks
    ``inventory.mac`` of an encrypted image; remembers the image's cipher for the
    readers of its files (:func:`plain`, :func:`chunk_cipher`).
    """
    where = os.path.realpath(path)
    key = _KEY
    if len(_IMAGES) >= _IMAGES_KEPT:  # a long-running receiver opens images for ever: entries are made again on demand
        _IMAGES.clear()
    if not inventory.HasField("encryption"):
        if key is not None:
            raise ImageError(path, f"not encrypted, but --encrypt-key {key.path} was given: an encrypted chain has no "
                                   "plain image, and a plain image is not read as if it were encrypted",
                             hint="leave out --encrypt-key for a plain image")
        _IMAGES[where] = None
        return
    enc = inventory.encryption
    if enc.cipher != CIPHER:
        raise CorruptImage(os.path.join(path, "inventory.img"), f"encrypted with {enc.cipher!r}, this ckpt knows {CIPHER}")
    if key is None:
        raise ImageError(path, f"encrypted ({_describe(enc.key_id)}): give its key file with --encrypt-key FILE",
                         hint="`ckpt show` and `ckpt verify` need the key as well")
    if not hmac.compare_digest(key.key_id, enc.key_id):
        raise ImageError(path, f"encrypted with {_describe(enc.key_id)}, but --encrypt-key {key.path} is "
                               f"{_describe(key.key_id)}: the wrong key")
    if not 0 < enc.segment_size <= _MAX_SEGMENT or len(enc.salt) != _SALT_SIZE:
        raise CorruptImage(os.path.join(path, "inventory.img"), "invalid encryption record (segment size or salt)")
    cipher = ImageCipher(key, inventory.image_id, bytes(enc.salt), enc.segment_size)
    mac_path = os.path.join(path, MAC_FILE)
    try:
        mac = framing.read_image_file(mac_path, max_size=64)
    except FileNotFoundError:
        raise CorruptImage(mac_path, "missing: an encrypted image has one") from None
    if not hmac.compare_digest(bytes(mac), cipher.mac(data)):
        raise CorruptImage(os.path.join(path, "inventory.img"), f"does not match {MAC_FILE} under this key "
                                                                "(changed after it was written)")
    _IMAGES[where] = cipher


def _cipher_of(path: str) -> ImageCipher | None:
    """The cipher of the image holding the file ``path`` (opening its inventory if no reader did yet)."""
    where = os.path.realpath(os.path.dirname(path))
    if where not in _IMAGES:
        from .reader import Image  # late: the reader imports this module

        Image.open(where, check_sizes=False)
    return _IMAGES.get(where)


def plain(path: str, data: bytearray) -> bytearray:
    """The plain bytes of the record file ``path`` (``data``: as stored, header already checked).

    A file of an encrypted image must be sealed, and a sealed one must open.
    """
    if os.path.basename(path) == "inventory.img" and not framing.is_sealed(data):
        return data
    found = chunk_cipher(path, data)
    if found is None:
        return data
    return found[0].open_records(path, data, found[1])


def chunk_cipher(path: str, header: bytes | bytearray) -> tuple[FileCipher, int] | None:
    """(the cipher, the segment size) of the file ``path`` whose header starts ``header``; None for a plain
    file of a plain image.  A file of an encrypted image must be sealed, a sealed one in an encrypted image."""
    sealed = framing.is_sealed(header)
    if not sealed and _IMAGES.get(os.path.realpath(os.path.dirname(path))) is None:
        return None
    cipher = _cipher_of(path)
    if cipher is None:
        raise CorruptImage(path, "sealed (encrypted) in an image that is not encrypted")
    if not sealed:
        raise CorruptImage(path, "not encrypted, in an encrypted image (put there after it was written)")
    return cipher.file(os.path.basename(path)), cipher.segment_size
