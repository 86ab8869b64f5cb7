"""Whose word an image is: its owner's, or a trusted signer's.

An image directory holds what its owner wrote, re-sealed checksums included.
A restore by root of an image another user owns, or could have written,
is refused (:mod:`ckpt.image.dirs`) unless it is signed by a key the restorer
trusts (``--verify-key``).  With such a signature it proceeds, from a
*private copy*: the owner can still change the files after the signature was
checked and before the restore reads them, so every file the signed
inventory lists (and the inventory and its signature) is copied into a new
0700 directory of ours, and the signature and every file's SHA-256 are
checked there; the restore reads only that copy, removed afterwards.  The
directories above the image must still be safe (root's or ours, written by
nobody else), and neither the image nor a file in it may be writable by its
group or others or be a symbolic link: those refusals stay, signed or not.

Without a signature, the records of an image owned by a user other than root
may claim no more than that user had (:mod:`ckpt.resources.creds_check`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ImageError
from . import kinds
from .chain import walk_chain
from .dirs import check_dir_to_read
from .signing import SIGNATURE_FILE, verified_chain

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["owner_of", "foreign", "signed_for_restore"]

_CHUNK = 1 << 20


def owner_of(path: str | os.PathLike[str]) -> int:
    """The uid that owns the image directory ``path`` (a handed-over descriptor's directory too)."""
    return os.stat(path).st_uid


def foreign(uid: int) -> bool:
    """Whether ``uid`` is another user than root and the one running ckpt."""
    return uid not in (0, os.geteuid())


def _copy_file(src_dir: str, name: str, dst_dir: str, limit: int) -> None:
    """Copy the regular file ``name`` (never through a link, at most ``limit`` + 1 bytes: a bigger one fails the
    check of its size) into ``dst_dir``, mode 0600."""
    try:
        fd = os.open(os.path.join(src_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # the check of the copy names what is missing
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(os.path.join(src_dir, name), "a symbolic link, where an image holds files") from exc
        raise
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(os.path.join(src_dir, name), "not a regular file")
        out = os.open(os.path.join(dst_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(out, "wb") as dst:
            left = limit + 1
            while left > 0 and (data := src.read(min(_CHUNK, left))):
                dst.write(data)
                left -= len(data)


def _private_copy(newest: str, into: str) -> str:
    """Copy the chain of ``newest`` under ``into``, keeping the images' places relative to each other (a parent
    is found by a relative path); the copy's newest image."""
    images, error = walk_chain(newest, check_sizes=False)
    if error is not None:
        raise error
    top = os.path.commonpath([os.path.realpath(i.path) for i in images])
    copy_of_newest = into
    for image in images:
        where = os.path.join(into, os.path.relpath(os.path.realpath(image.path), top))
        os.makedirs(where, mode=0o700, exist_ok=True)
        for digest in image.inventory.files:
            if os.path.basename(digest.name) != digest.name or digest.name in ("", ".", ".."):
                raise ImageError(image.inventory_path, f"lists a file {digest.name!r} outside the image")
            _copy_file(image.path, digest.name, where, digest.size)
        for name in (kinds.INVENTORY.template, SIGNATURE_FILE):
            _copy_file(image.path, name, where, 1 << 30)
        copy_of_newest = where
    return copy_of_newest


@contextlib.contextmanager
def signed_for_restore(image_dir: str | os.PathLike[str], resolved: str,
                       public: "Ed25519PublicKey") -> Iterator[str]:
    """The image a restore with ``--verify-key`` reads: ``resolved`` itself, checked, when root or we own every
    image of its chain; else a private copy of it, checked (module doc).  The copy is removed on exit."""
    check_dir_to_read(image_dir, any_owner=True)
    if resolved != os.fspath(image_dir):
        check_dir_to_read(resolved, any_owner=True)
    images, _ = walk_chain(resolved, check_sizes=False)
    if not any(foreign(owner_of(i.path)) for i in images):
        verified_chain(resolved, public)
        yield resolved
        return
    work = tempfile.mkdtemp(prefix="ckpt-signed-")  # 0700, ours
    try:
        copy = _private_copy(resolved, work)
        verified_chain(copy, public)
        yield copy
    finally:
        shutil.rmtree(work, ignore_errors=True)
