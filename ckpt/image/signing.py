"""Signed images: an Ed25519 signature over ``inventory.img``, checked before a restore trusts the image.

``inventory.img`` lists the SHA-256 and size of every other file of its image and
the id of its parent, so a signature over its bytes covers the whole image: a
restore that checks the signature, then every file against the inventory
(:func:`verified_chain`), runs nothing an attacker wrote, even as root, even from
a directory an attacker could write to before ckpt looked.  Unkeyed checksums
alone cannot give that: whoever can alter a file can re-seal the inventory.

* ``ckpt keygen -o FILE`` writes a private key (PEM, PKCS#8, mode 0600) and its
  public key (``FILE.pub``, SubjectPublicKeyInfo PEM).
* ``dump``, ``pre-dump`` and ``dump --incremental`` with ``--sign-key FILE``
  write ``inventory.sig`` next to the inventory before the image is renamed into
  place, so a complete image is signed or it is not an image at all:
  ``CKPTSIG1`` | SHA-256 of the raw public key (32 bytes, to name the key in
  messages) | Ed25519 signature (64 bytes) of ``"ckpt image signature 1\\0"`` +
  the inventory's bytes.
* ``restore``, ``verify`` and ``show`` with ``--verify-key FILE`` (a public key,
  or the private one) refuse an image of the chain that is unsigned, signed with
  another key, or whose inventory or any file changed after it was signed.

A private key file must be readable by its owner only and owned by root or the
user running ckpt; a public key file must not be writable by another user.
Keys are never taken from the command line.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptImage, ImageError, UsageError
from ..secretfile import read_secret_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from .reader import Image

__all__ = ["SIGNATURE_FILE", "generate", "load_signing_key", "load_verify_key", "signing", "current_signer",
           "sign_inventory", "check_signature", "image_problem", "verified_chain", "fingerprint", "key_of"]

SIGNATURE_FILE = "inventory.sig"
_MAGIC = b"CKPTSIG1"
_DOMAIN = b"ckpt image signature 1\0"
_SIZE = len(_MAGIC) + 32 + 64
_MAX_KEY_FILE = 16 << 10

_SIGNER: contextvars.ContextVar["Ed25519PrivateKey | None"] = contextvars.ContextVar("ckpt_image_signer", default=None)


def fingerprint(public: "Ed25519PublicKey") -> bytes:
    """SHA-256 of the raw 32-byte public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()


def generate(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Write a new private key to ``path`` (0600) and its public key to ``path.pub``; both paths.

    Neither file may exist already (a key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path, pub_path = os.fspath(path), os.fspath(path) + ".pub"
    for p in (priv_path, pub_path):
        if os.path.lexists(p):
            raise UsageError(f"{p} already exists: a key is never overwritten")
    _write_new(priv_path, private, 0o600)
    try:
        _write_new(pub_path, public, 0o644)
    except BaseException:
        os.unlink(priv_path)
        raise
    return priv_path, pub_path


def _write_new(path: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a key file (:func:`ckpt.secretfile.read_secret_file`): a private key is a secret."""
    data = read_secret_file(path, "key file", max_size=_MAX_KEY_FILE, secret=False)
    if b"PRIVATE KEY" in data:
        data = read_secret_file(path, "private key", max_size=_MAX_KEY_FILE)
    return data


def load_signing_key(path: str | os.PathLike[str]) -> "Ed25519PrivateKey":
    """The Ed25519 private key in ``path`` (``ckpt keygen``'s format); UsageError saying what is wrong."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{os.fspath(path)} is not an unencrypted PEM private key (ckpt keygen makes one)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{os.fspath(path)} is not an Ed25519 key (ckpt keygen makes one)")
    return key


def load_verify_key(path: str | os.PathLike[str]) -> "Ed25519PublicKey":
    """The Ed25519 public key in ``path`` (``FILE.pub`` of ``ckpt keygen``, or the private key itself)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    data = _read_key_file(path)
    try:
        if b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None)
            public = key.public_key() if isinstance(key, Ed25519PrivateKey) else None
        else:
            loaded = serialization.load_pem_public_key(data)
            public = loaded if isinstance(loaded, Ed25519PublicKey) else None
    except (ValueError, TypeError):
        raise UsageError(f"{os.fspath(path)} is not a PEM public key (ckpt keygen makes FILE.pub)") from None
    if public is None:
        raise UsageError(f"{os.fspath(path)} is not an Ed25519 key (ckpt keygen makes one)")
    return public


@contextlib.contextmanager
def signing(key: "Ed25519PrivateKey | None") -> Iterator[None]:
    """Images committed inside this block (in this thread or context) are signed with ``key``."""
    token = _SIGNER.set(key)
    try:
        yield
    finally:
        _SIGNER.reset(token)


def current_signer() -> "Ed25519PrivateKey | None":
    return _SIGNER.get()


def sign_inventory(image_dir: str, inventory: bytes, key: "Ed25519PrivateKey") -> str:
    """Write ``inventory.sig`` for these inventory bytes into ``image_dir`` (0600); its path."""
    path = os.path.join(image_dir, SIGNATURE_FILE)
    body = _MAGIC + fingerprint(key.public_key()) + key.sign(_DOMAIN + inventory)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    return path


def check_signature(image: "Image", public: "Ed25519PublicKey") -> str | None:
    """Why the inventory of ``image`` is not signed by ``public`` (None: it is)."""
    from cryptography.exceptions import InvalidSignature

    try:
        with open(os.path.join(image.path, SIGNATURE_FILE), "rb") as f:
            body = f.read(_SIZE + 1)
        with open(image.inventory_path, "rb") as f:
            inventory = f.read()
    except FileNotFoundError:
        return f"not signed (no {SIGNATURE_FILE})"
    except OSError as exc:
        return f"cannot read its signature: {exc.strerror}"
    if len(body) != _SIZE or not body.startswith(_MAGIC):
        return f"{SIGNATURE_FILE} is not a ckpt signature"
    mark = body[len(_MAGIC):len(_MAGIC) + 32]
    if mark != fingerprint(public):
        return f"signed with another key (key {mark.hex()[:16]}…, expected {fingerprint(public).hex()[:16]}…)"
    try:
        public.verify(body[len(_MAGIC) + 32:], _DOMAIN + inventory)
    except InvalidSignature:
        return "inventory.img does not match its signature (changed after it was signed)"
    return None


def verified_chain(path: str | os.PathLike[str], public: "Ed25519PublicKey") -> None:
    """Refuse (ImageError) the chain of ``path`` unless every image is signed by ``public`` and every file of
    every image still has the size and SHA-256 its signed inventory lists (page data read in full)."""
    from .chain import walk_chain
    from .verify import check_chain

    images, error = walk_chain(path)
    if error is not None:
        raise error
    for image in images:
        why = check_signature(image, public)
        if why is not None:
            raise ImageError(image.inventory_path, why, hint="restore only images signed with the key you trust; "
                                                             "`ckpt show` names the key an image was signed with")
    for problems in check_chain(images, read_chunks=True):
        if problems:
            raise CorruptImage(problems[0].path, f"{problems[0].problem} (after its signature was checked)")


def image_problem(image_dir: str | os.PathLike[str], public: "Ed25519PublicKey") -> str | None:
    """Why one image (its parents not opened) is not signed by ``public``, or not as signed; None when it is."""
    from ..errors import CkptError
    from .reader import Image
    from .verify import check_chain

    try:
        image = Image.open(image_dir)
        why = check_signature(image, public)
        if why is None:
            problems = check_chain([image], read_chunks=True, parents=False)[0]
            if problems:
                why = f"{os.path.basename(problems[0].path)}: {problems[0].problem}"
    except CkptError as exc:
        why = str(exc)
    return why


def key_of(image_dir: str | os.PathLike[str]) -> str | None:
    """The fingerprint (hex, 16 digits) of the key that signed the image at ``image_dir``, None if unsigned."""
    try:
        body = Path(image_dir, SIGNATURE_FILE).read_bytes()[:_SIZE]
    except OSError:
        return None
    if len(body) != _SIZE or not body.startswith(_MAGIC):
        return None
    return body[len(_MAGIC):len(_MAGIC) + 32].hex()[:16]
