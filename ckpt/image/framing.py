"""The byte layout shared by every image file: header, records, end marker.

Every file of an image starts with a 12-byte header::

    offset 0  4 bytes  b"CKPT"          common to all ckpt files
    offset 4  4 bytes  kind magic        e.g. b"MMAP" (see kinds.py)
    offset 8  u32 LE   format version    FILE_FORMAT_VERSION (the inventory: see compat.py)

A *record file* then holds length-prefixed protobuf messages, each a u32 LE
length followed by that many bytes, and ends with an end marker: the length
0xFFFFFFFF followed by the SHA-256 of every byte before the marker.  The marker
makes each file checkable on its own (inventory.img has nobody else to vouch
for it) and tells a file cut at a record boundary from a complete one.

The page-data file (``pages-*.img``) has the same header followed by raw
chunks located through the pagemap, so it has no records and no end marker.

Everything that reads or writes these bytes is in this module; errors name the
file and what is wrong in one line (``CorruptImage``).
"""

from __future__ import annotations

import array
import errno
import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar, overload

from ckpt.errors import CorruptImage

T = TypeVar("T")

__all__ = [
    "FILE_MAGIC",
    "FORMAT_VERSION",
    "FILE_FORMAT_VERSION",
    "MIN_FORMAT_VERSION",
    "HEADER_SIZE",
    "END_MARKER",
    "TRAILER_SIZE",
    "MAX_RECORD_SIZE",
    "pack_header",
    "parse_header",
    "pack_record",
    "pack_trailer",
    "encode_file",
    "split_records",
    "RecordViews",
    "MadeOnAccess",
    "MAX_RECORDS",
    "open_image_file",
    "require_regular",
    "read_image_file",
    "SEALED",
    "is_sealed",
]

#: First four bytes of every ckpt image file.
FILE_MAGIC = b"CKPT"
#: The newest format this ckpt reads and writes.  Bump it only when an older
#: ckpt would misread the new files; adding fields or file kinds does not need a
#: bump (ckpt/image/compat.py: the compatibility policy).
FORMAT_VERSION = 3
# 2: zstd page chunks carry no CRC-32 (0) and pages files no SHA-256 in the
#    inventory (empty): a format-1 reader would call both corrupt.
# 3: the inventory lists the features a restore needs (required_features) and
#    the reader refuses those it does not know.  Only an inventory needing a
#    feature the format-2 readers lack is written as 3 (compat.format_for):
#    they refuse it by this number.  The layout of the files is format 2's.
#: The format every file but such an inventory is written in.
FILE_FORMAT_VERSION = 2
#: The oldest format this ckpt still reads.
MIN_FORMAT_VERSION = 1
#: Set in the version word of a file sealed with the image's key (ckpt/image/sealing.py).  A reader
#: that predates it sees a format number from the future and refuses the file.
SEALED = 0x100

_HEADER = struct.Struct("<4s4sI")
_LEN = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
#: Length value that announces the end marker instead of a record.
END_MARKER = 0xFFFFFFFF
TRAILER_SIZE = _LEN.size + hashlib.sha256().digest_size
#: No record may be larger (a corrupt length must not make us allocate GiBs).
MAX_RECORD_SIZE = 256 << 20
#: No record file may hold more records (each costs ~0.6 KiB decoded, whatever its size).
MAX_RECORDS = 1 << 20


def _show_magic(magic: bytes) -> str:
    text = magic.decode("ascii", "backslashreplace")
    return text if text.isprintable() else repr(magic)


def pack_header(kind_magic: bytes, version: int = FILE_FORMAT_VERSION) -> bytes:
    """The 12-byte header of a file of the given kind."""
    if len(kind_magic) != 4:
        raise ValueError(f"kind magic must be 4 bytes, got {kind_magic!r}")
    return _HEADER.pack(FILE_MAGIC, kind_magic, version)


def parse_header(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    expect: bytes | None = None,
    *,
    names: dict[bytes, str] | None = None,
) -> tuple[bytes, int]:
    """Check the header at the start of ``data``; return (kind magic, version).

    ``expect`` is the kind magic the caller needs; ``names`` maps magics to
    kind names, only to make the message readable.  Raises ``CorruptImage``
    naming ``path`` for a short file, a wrong magic, or an unreadable version.
    """
    if len(data) < HEADER_SIZE:
        raise CorruptImage(path, f"truncated: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    common, magic, version = _HEADER.unpack_from(data, 0)
    version &= ~SEALED
    if common != FILE_MAGIC:
        raise CorruptImage(
            path, f"wrong magic {_show_magic(common)!s} (expected {FILE_MAGIC.decode()}): not a ckpt image file"
        )
    if expect is not None and magic != expect:
        names = names or {}
        found = names.get(magic, "unknown kind")
        raise CorruptImage(
            path,
            f"wrong file kind: magic {_show_magic(magic)} ({found}) "
            f"where {_show_magic(expect)} ({names.get(expect, 'expected kind')}) belongs",
        )
    if version > FORMAT_VERSION:
        raise CorruptImage(
            path,
            f"written by a newer ckpt (format {version}), this ckpt reads ≤ {FORMAT_VERSION}",
            hint="use a newer ckpt to read this image",
        )
    if version < MIN_FORMAT_VERSION:
        raise CorruptImage(path, f"invalid format version {version} (this ckpt reads {MIN_FORMAT_VERSION}..{FORMAT_VERSION})")
    return magic, version


def is_sealed(data: bytes | bytearray | memoryview) -> bool:
    """Whether the file whose header starts ``data`` (checked by :func:`parse_header`) is sealed."""
    return len(data) >= HEADER_SIZE and bool(_HEADER.unpack_from(data, 0)[2] & SEALED)


def pack_record(payload: bytes) -> bytes:
    """One record: u32 LE length + payload."""
    if len(payload) > MAX_RECORD_SIZE:
        raise ValueError(f"record of {len(payload)} bytes exceeds the {MAX_RECORD_SIZE}-byte limit")
    return _LEN.pack(len(payload)) + payload


def pack_trailer(sha256_of_preceding: bytes) -> bytes:
    """The end marker, given the SHA-256 of every byte before it."""
    return _LEN.pack(END_MARKER) + sha256_of_preceding


def encode_file(kind_magic: bytes, payloads: Iterable[bytes], version: int = FILE_FORMAT_VERSION) -> bytes:
    """A whole record file in memory (header, records, end marker)."""
    parts = [pack_header(kind_magic, version)]
    parts.extend(pack_record(p) for p in payloads)
    body = b"".join(parts)
    return body + pack_trailer(hashlib.sha256(body).digest())


def _walk(data: memoryview) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of each record; stop at the end marker (yield it as length -1)."""
    pos = HEADER_SIZE
    end = len(data)
    while pos + _LEN.size <= end:
        (length,) = _LEN.unpack_from(data, pos)
        if length == END_MARKER:
            yield pos, -1
            return
        yield pos, length
        pos += _LEN.size + length
    yield pos, -2  # ran off the end


class MadeOnAccess(Sequence[T]):
    """A sequence kept in compact form whose items are made when they are asked for.

    Subclasses give ``__len__`` and ``_make(index)`` (index already checked);
    a slice is a list of made items.
    """

    def _make(self, index: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._make(index)


class RecordViews(MadeOnAccess[memoryview]):
    """The record payloads of a file, as views made on access (a view object per record up front
    cost ~0.2 KiB each, which a file of a million empty records would turn into 200 MB)."""

    def __init__(self, view: memoryview, bounds: array.array) -> None:
        self._view = view
        self._bounds = bounds  # start, end of each payload

    def __len__(self) -> int:
        return len(self._bounds) // 2

    def _make(self, index: int) -> memoryview:
        return self._view[self._bounds[2 * index] : self._bounds[2 * index + 1]]


def split_records(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> RecordViews:
    """The record payloads of a record file whose header was already checked.

    Verifies the end marker.  The messages say which of these happened:
    the file was cut short, altered in place (checksum mismatch), or has
    bytes after its end marker.  More than :data:`MAX_RECORDS` records are refused.
    """
    view = memoryview(data).cast("B")
    size = len(view)
    intact = (
        size >= HEADER_SIZE + TRAILER_SIZE
        and _LEN.unpack_from(view, size - TRAILER_SIZE)[0] == END_MARKER
        and hashlib.sha256(view[: size - TRAILER_SIZE]).digest() == view[size - hashlib.sha256().digest_size :]
    )
    bounds = array.array("Q")
    for index, (pos, length) in enumerate(_walk(view)):
        if length == -1:
            marker_end = pos + TRAILER_SIZE
            if marker_end > size:
                raise CorruptImage(path, f"truncated inside the end marker after {index} records")
            if marker_end < size:
                raise CorruptImage(path, f"{size - marker_end} unexpected bytes after the end marker")
            if not intact:
                raise CorruptImage(path, "checksum mismatch: the content does not match the SHA-256 in its end marker (file altered)")
            return RecordViews(view, bounds)
        if length == -2:
            if pos == size:
                raise CorruptImage(path, f"truncated after {index} complete records: no end marker")
            raise CorruptImage(path, f"truncated inside the length of record {index}")
        if length > MAX_RECORD_SIZE or pos + _LEN.size + length > size:
            if not intact and size >= TRAILER_SIZE and _LEN.unpack_from(view, size - TRAILER_SIZE)[0] == END_MARKER:
                raise CorruptImage(path, "checksum mismatch: the content does not match the SHA-256 in its end marker (file altered)")
            remaining = size - pos - _LEN.size
            raise CorruptImage(path, f"truncated: record {index} claims {length} bytes, only {max(remaining, 0)} remain")
        if index >= MAX_RECORDS:
            raise CorruptImage(path, f"holds more than {MAX_RECORDS} records, more than this ckpt reads from one file")
        bounds.extend((pos + _LEN.size, pos + _LEN.size + length))
    raise AssertionError("unreachable")  # pragma: no cover


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def require_regular(path: str | os.PathLike[str], mode: int) -> None:
    """CorruptImage naming ``path`` unless ``mode`` (from lstat) is a regular file's."""
    if stat.S_ISREG(mode):
        return
    what = next((name for test, name in _FILE_TYPES if test(mode)), "not a file")
    note = " (image files are never followed)" if stat.S_ISLNK(mode) else ""
    raise CorruptImage(path, f"is {what}, not a regular file{note}")


def open_image_file(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file ``path``; raises CorruptImage for anything else.

    A symbolic link is not followed and a FIFO, device or socket is never
    opened (an image file is data we wrote; ``/dev/zero`` would be read for
    ever, a FIFO would block, and opening some devices has effects), so the
    file is looked at with lstat first and opened with O_NOFOLLOW | O_NONBLOCK;
    the descriptor must then be the inode lstat saw.  ``FileNotFoundError``
    passes through: the callers say what a missing file means to them.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
    require_regular(path, before.st_mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a symbolic link since lstat
            raise CorruptImage(path, "is a symbolic link, not a regular file (image files are never followed)") from None
        raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        require_regular(path, st.st_mode)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise CorruptImage(path, "was replaced while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_image_file(path: str | os.PathLike[str], size: int | None = None, *, max_size: int | None = None,
                    expect: bytes | None = None, names: dict[bytes, str] | None = None) -> bytearray:
    """The whole of the regular file ``path``, never more than ``size`` (or ``max_size``) bytes.

    ``size`` is the size the inventory records: a file of another size is
    refused before the rest is read.  Without it, a file larger than
    ``max_size`` is refused.  The buffer is allocated once, from a size
    checked against the limit, and filled with at most that many bytes.
    With ``expect`` (a kind magic) the header is read and checked first, so a
    file of the wrong kind is named as such rather than by its size.
    """
    fd = open_image_file(path)
    try:
        if expect is not None:
            try:
                head = os.pread(fd, HEADER_SIZE, 0)
            except OSError as exc:
                raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
            parse_header(path, head, expect, names=names)
        actual = os.fstat(fd).st_size
        if size is not None and actual != size:
            raise CorruptImage(path, f"size is {actual} bytes, inventory.img says {size} (truncated or extended)")
        if max_size is not None and actual > max_size:
            raise CorruptImage(path, f"is {actual} bytes, larger than the {max_size} bytes this ckpt reads for it")
        data = bytearray(actual)
        view = memoryview(data)
        done = 0
        while done < actual:
            try:
                n = os.readv(fd, [view[done:]])
            except OSError as exc:
                raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
            if n == 0:
                raise CorruptImage(path, f"truncated while read: {done} of {actual} bytes")
            done += n
        return data
    finally:
        os.close(fd)
