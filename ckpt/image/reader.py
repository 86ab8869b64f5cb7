"""Reading an image directory, checking as it goes.

:meth:`Image.open` reads and checks ``inventory.img`` (magic, kind, format
version, end-marker checksum).  Every record file is checked against the
inventory (size and SHA-256) before it is decoded.  Page data is read chunk by
chunk: each chunk's CRC-32 and size are checked before
any of its bytes are handed out, so restore can stream a large image and still
never use a corrupt page.  Problems raise ``NotAnImage`` / ``CorruptImage``
with the file and the problem on one line.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar, cast

import zstandard
from google.protobuf.message import DecodeError, Message

from ckpt.errors import CorruptImage, NotAnImage
from ckpt.image import bounds, compat, framing, kinds, sealing
from ckpt.image.kinds import Kind
from ckpt.image.pb import core_pb2, files_pb2, inventory_pb2, mm_pb2, pagemap_pb2, process_pb2
from ckpt.image.records import (
    ChunkTable,
    Codec,
    FileDigest,
    ImageKind,
    PageChunk,
    Pagemap,
    PageRange,
    PageState,
    ParentLink,
    ProcessInfo,
)

if TYPE_CHECKING:
    from ckpt.image.verify import Problem

__all__ = ["Image", "ChunkReader", "decode_records", "decode_records_cost", "read_file", "read_record_file",
           "decode_pagemap", "iter_stream", "chunk_pieces", "zstd_bound"]

MessageT = TypeVar("MessageT", bound=Message)

#: Threads reading and decompressing chunks ahead of the consumer (see ChunkReader.plan).
READ_AHEAD_WORKERS = 2


def zstd_bound(raw_length: int) -> int:
    """The most bytes zstd stores ``raw_length`` bytes in (ZSTD_COMPRESSBOUND)."""
    small = ((128 << 10) - raw_length) >> 11 if raw_length < 128 << 10 else 0
    return raw_length + (raw_length >> 8) + small


def read_file(path: str, size: int | None = None, *, max_size: int | None = None, kind: Kind | None = None,
              missing: str = "missing: listed in inventory.img but not in the directory") -> bytearray:
    """The bytes of one image file (:func:`framing.read_image_file`, header first when ``kind`` is
    given); a missing file is CorruptImage(``missing``)."""
    try:
        return framing.read_image_file(path, size, max_size=max_size, expect=None if kind is None else kind.magic,
                                       names=kinds.MAGIC_NAMES)
    except FileNotFoundError:
        raise CorruptImage(path, missing) from None


#: (kind's magic, SHA-256 of a record file) -> the decode cost its bytes were walked to have (Image.decode_file).
_COSTS: dict[tuple[bytes, bytes], bounds.Cost] = {}
_COSTS_KEPT = 4096


def decode_records_cost(path: str, kind: Kind, payloads: Sequence[memoryview],
                        checked: bounds.Cost | None = None) -> tuple[list[Message], bounds.Cost]:
    """Decode record payloads as the kind's message types (head first when it has one), and their cost.

    What decoding would allocate is bounded first (:mod:`ckpt.image.bounds`), unless ``checked`` is the
    cost these very bytes were found to have before.
    """
    if kind.head is not None and not payloads:
        raise CorruptImage(path, f"no {kind.head.__name__} record: the file holds no records")

    def cls_of(index: int) -> type[Message]:
        cls = kind.head if (index == 0 and kind.head is not None) else kind.record
        assert cls is not None
        return cls

    if checked is not None and (excess := checked.excess()) is not None:  # the limits still apply
        raise CorruptImage(path, excess)
    cost = checked or bounds.check_decode_cost(path, ((cls_of(i).DESCRIPTOR, p) for i, p in enumerate(payloads)))
    return [_parse(path, index, cls_of(index), payload) for index, payload in enumerate(payloads)], cost


def decode_records(path: str, kind: Kind, payloads: Sequence[memoryview]) -> list[Message]:
    """Decode record payloads as the kind's message types (head first when it has one)."""
    return decode_records_cost(path, kind, payloads)[0]


def read_record_file(path: str, kind: Kind, data: bytes | bytearray | None = None) -> tuple[int, list[Message]]:
    """Check header and end marker of one record file and decode it; return (version, messages).

    Does not consult the inventory (``show`` uses it on single files).
    """
    if data is None:
        data = read_file(path, max_size=framing.MAX_RECORD_SIZE, missing="no such file")
    _, version = framing.parse_header(path, data, kind.magic, names=kinds.MAGIC_NAMES)
    return version, decode_records(path, kind, framing.split_records(path, sealing.plain(path, data)))


class ChunkReader:
    """Loads and checks chunks of one pages file into reused buffers.

    The memoryview returned by :meth:`load` is valid until the next call.
    After :meth:`plan` (the chunks the caller will load, in order), chunks are
    read, checked and decompressed ahead on a few threads while the caller uses
    the previous one: zstandard, zlib and ``os.preadv`` all release the GIL, so
    decompression runs beside restore's process_vm_writev instead of in turn.
    Memory stays bounded: one buffer pair per chunk in flight.
    """

    def __init__(self, path: str, pagemap: Pagemap, expected_size: int | None) -> None:
        self.path = path
        self._pagemap = pagemap
        try:
            self._fd = framing.open_image_file(path)
        except FileNotFoundError:
            raise CorruptImage(path, "missing: listed in the pagemap but not in the directory") from None
        try:
            head = os.pread(self._fd, framing.HEADER_SIZE, 0)
            framing.parse_header(path, head, kinds.PAGES.magic, names=kinds.MAGIC_NAMES)
            # An encrypted image's chunks are opened with this (resolved here: _fetch runs on other threads).
            sealed = sealing.chunk_cipher(path, head)
            self._cipher = sealed[0] if sealed is not None else None
            self.size = os.fstat(self._fd).st_size
            if expected_size is not None and self.size != expected_size:
                raise CorruptImage(path, f"size is {self.size} bytes, inventory.img says {expected_size} (truncated or extended)")
            # Every chunk's lengths are checked before a buffer is sized by them.
            self._in_size = self._out_size = 0
            for index, chunk in enumerate(pagemap.chunks):
                self._check_chunk(index, chunk)
                self._in_size = max(self._in_size, chunk.length)
                if chunk.codec is Codec.ZSTD or self._cipher is not None:  # sealed: opened into the out buffer
                    self._out_size = max(self._out_size, chunk.raw_length)
        except OSError as exc:
            os.close(self._fd)
            raise CorruptImage(path, f"cannot read: {exc.strerror}") from None
        except BaseException:
            os.close(self._fd)
            raise
        self._sync_bufs: tuple[bytearray, bytearray] | None = None  # for loads outside the plan
        self._local = threading.local()  # one ZstdDecompressor per thread (they are not thread-safe)
        self.loaded: int | None = None
        self._view = memoryview(b"")
        # Read-ahead state (plan()).
        self._order: list[int] = []
        self._next = 0  # position in _order of the next expected load
        self._slots: list[tuple[bytearray, bytearray]] = []
        self._futures: dict[int, Future[memoryview]] = {}  # position in _order -> its chunk
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _check_chunk(self, index: int, chunk: PageChunk) -> None:
        """A chunk's place and lengths against the file and the pagemap (nothing read)."""
        where = f"chunk {index} (offset {chunk.offset:#x})"
        limit = min(self._pagemap.chunk_size, bounds.MAX_CHUNK_SIZE)
        if chunk.raw_length > limit:
            raise CorruptImage(self.path, f"{where}: raw length {chunk.raw_length} exceeds the chunk size {limit}")
        if chunk.offset < framing.HEADER_SIZE or chunk.offset + chunk.length > self.size:
            raise CorruptImage(self.path, f"{where}: {chunk.length} bytes past the end of the file ({self.size} bytes)")
        stored_max = chunk.raw_length if chunk.codec is Codec.NONE else zstd_bound(chunk.raw_length)
        if self._cipher is not None:
            stored_max += sealing.TAG_SIZE
            if chunk.length <= sealing.TAG_SIZE:
                raise CorruptImage(self.path, f"{where}: {chunk.length} bytes, too short to be sealed")
        if chunk.length > stored_max:
            raise CorruptImage(self.path, f"{where}: {chunk.length} bytes stored for {chunk.raw_length} raw, more than "
                                          f"{chunk.codec.name} ever stores")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # no thread may read a closed fd
            self._pool = None
        self._futures.clear()
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def plan(self, order: Sequence[int], workers: int = READ_AHEAD_WORKERS) -> None:
        """Announce that :meth:`load` will be called for the chunks ``order``, in that order.

        Starts reading ahead: ``workers`` chunks are prepared while the caller
        uses the current one (``workers + 1`` buffer pairs).  A load outside the
        plan still works, synchronously.
        """
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._futures.clear()
        self._order, self._next = list(order), 0
        if len(self._order) < 2 or workers < 1:
            self._order = []
            return
        nslots = workers + 1
        while len(self._slots) < nslots:
            self._slots.append((bytearray(self._in_size), bytearray(self._out_size)))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-unzstd")
        for pos in range(min(workers, len(self._order))):
            self._submit(pos)

    def _submit(self, pos: int) -> None:
        assert self._pool is not None
        inbuf, outbuf = self._slots[pos % len(self._slots)]
        self._futures[pos] = self._pool.submit(self._fetch, self._order[pos], inbuf, outbuf)

    def load(self, index: int) -> memoryview:
        """Read, check and decompress chunk ``index``; return its raw bytes."""
        if self.loaded == index:
            return self._view
        pos = self._next
        if pos < len(self._order) and self._order[pos] == index:
            # The slot of position pos - 1 (the view handed out last) is free now.
            self._next = pos + 1
            ahead = pos + len(self._slots) - 1
            if ahead < len(self._order):
                self._submit(ahead)
            out = self._futures.pop(pos).result()
        else:
            if self._sync_bufs is None:
                self._sync_bufs = (bytearray(self._in_size), bytearray(self._out_size))
            out = self._fetch(index, *self._sync_bufs)
        self.loaded, self._view = index, out
        return out

    @property
    def buffer_sizes(self) -> tuple[int, int]:
        """Bytes :meth:`load_into` needs: (stored, raw) of this file's biggest chunk."""
        return self._in_size, self._out_size

    def load_into(self, index: int, inbuf: bytearray, outbuf: bytearray) -> memoryview:
        """Like :meth:`load`, on any thread, into the caller's buffers (see :attr:`buffer_sizes`).

        For callers that spread chunks over their own threads: restore writes
        each chunk's pages from the thread that decompressed it.
        """
        if len(inbuf) < self._in_size or len(outbuf) < self._out_size:
            raise ValueError(f"buffers of {len(inbuf)}/{len(outbuf)} bytes, chunks need {self._in_size}/{self._out_size}")
        return self._fetch(index, inbuf, outbuf)

    def _fetch(self, index: int, inbuf: bytearray, outbuf: bytearray) -> memoryview:
        """Read chunk ``index`` into ``inbuf``, check it, decompress into ``outbuf`` (any thread)."""
        chunk = self._pagemap.chunks[index]
        where = f"chunk {index} (offset {chunk.offset:#x})"
        self._check_chunk(index, chunk)
        stored = memoryview(inbuf)[: chunk.length]
        try:
            got = os.preadv(self._fd, [stored], chunk.offset)  # positioned: threads share the fd
        except OSError as exc:
            raise CorruptImage(self.path, f"{where}: cannot read: {exc.strerror}") from exc
        if got != chunk.length:
            raise CorruptImage(self.path, f"{where}: truncated, read {got} of {chunk.length} bytes")
        if zlib.crc32(stored) != chunk.crc32:
            raise CorruptImage(self.path, f"{where}: CRC-32 mismatch, the stored bytes were altered")
        if self._cipher is not None:
            stored = self._open(index, chunk, stored, outbuf)
        if chunk.codec is Codec.NONE:
            if stored.nbytes != chunk.raw_length:
                raise CorruptImage(self.path, f"{where}: uncompressed chunk of {stored.nbytes} bytes, pagemap says {chunk.raw_length}")
            return stored  # already the raw bytes: no copy
        if chunk.codec is Codec.ZSTD:
            out = memoryview(outbuf)[: chunk.raw_length]
            self._decompress(where, stored, out)
            return out
        # pragma: no cover - Pagemap construction rejects other codecs
        raise CorruptImage(self.path, f"{where}: unknown codec {chunk.codec}")

    def _open(self, index: int, chunk: PageChunk, stored: memoryview, outbuf: bytearray) -> memoryview:
        """The plaintext of a sealed chunk: in ``outbuf`` when stored raw, else in this thread's scratch buffer
        (zstd then decompresses it into ``outbuf``).  Opened in place of a new 4 MiB buffer per chunk."""
        assert self._cipher is not None
        n = chunk.length - sealing.TAG_SIZE
        if chunk.codec is Codec.NONE:
            if n > len(outbuf):
                raise CorruptImage(self.path, f"chunk {index}: {n} bytes sealed for {chunk.raw_length} raw")
            plain = memoryview(outbuf)[:n]
        else:
            scratch = getattr(self._local, "plain", None)
            if scratch is None or len(scratch) < n:
                scratch = self._local.plain = bytearray(max(n, self._in_size))
            plain = memoryview(scratch)[:n]
        self._cipher.open_chunk_into(self.path, index, stored, plain)
        return plain

    def _decompress(self, where: str, stored: memoryview, out: memoryview) -> None:
        try:
            size = zstandard.frame_content_size(stored)
        except zstandard.ZstdError as exc:
            raise CorruptImage(self.path, f"{where}: not a zstd frame ({exc})") from None
        if size != out.nbytes:
            raise CorruptImage(self.path, f"{where}: zstd frame holds {size} bytes, pagemap says {out.nbytes}")
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            reader = dctx.stream_reader(stored, read_across_frames=False)
            done = 0
            while done < out.nbytes:
                n = reader.readinto(out[done:])
                if not n:
                    break
                done += n
            extra = reader.read(1)  # the frame ends here (and zstd checks a format-1 frame's content checksum)
        except zstandard.ZstdError as exc:
            raise CorruptImage(self.path, f"{where}: zstd: {exc}") from None
        if done != out.nbytes or extra:
            raise CorruptImage(self.path, f"{where}: decompressed to a different size than the {out.nbytes} bytes recorded")


#: The columns of a PageRangeTable: (field, field number, array type code).
_COLUMNS = (("vaddr", 1, "Q"), ("nr_pages", 2, "Q"), ("state", 3, "B"), ("data_offset", 4, "Q"))


def decode_pagemap(path: str, payloads: Sequence[memoryview]) -> tuple[Pagemap, pagemap_pb2.PagemapHead, bounds.Cost]:
    """The Pagemap of a pagemap file's records, its head (without the range table) and what decoding cost.

    The range table (format 2) is decoded one column at a time, straight into a
    compact array: the decoder's copy of all four columns at once was as large
    again as the arrays (~50 MB for a million ranges).
    """
    if not payloads:
        raise CorruptImage(path, "no PagemapHead record: the file holds no records")
    descs = (pagemap_pb2.PagemapHead.DESCRIPTOR, pagemap_pb2.PageRange.DESCRIPTOR)
    cost = bounds.check_decode_cost(path, ((descs[bool(i)], p) for i, p in enumerate(payloads)))
    try:
        rest, _, tables = bounds.split_field(payloads[0], pagemap_pb2.PagemapHead.RANGES_FIELD_NUMBER)
    except ValueError:
        raise CorruptImage(path, "record 0 does not decode as PagemapHead (malformed protobuf)") from None
    head = _parse(path, 0, pagemap_pb2.PagemapHead, rest)
    codecs = {int(c): c for c in Codec}
    for i, c in enumerate(head.chunks):
        if c.codec not in codecs:
            raise CorruptImage(path, f"chunk {i}: PageChunk.codec holds unknown value {c.codec} (written by a newer ckpt?)")
    chunks = ChunkTable((c.offset, c.length, c.data_offset, c.raw_length, codecs[c.codec], c.crc32) for c in head.chunks)
    valid = {int(s) for s in PageState}
    if tables:  # format 2: one table (several occurrences merge, as in any protobuf reader)
        if len(payloads) > 1:
            raise CorruptImage(path, f"holds a range table and {len(payloads) - 1} PageRange records")
        columns = []
        for name, number, code in _COLUMNS:
            part = pagemap_pb2.PageRangeTable()
            try:
                part.ParseFromString(b"".join(bounds.split_field(t, number)[1] for t in tables))
            except (DecodeError, ValueError):
                raise CorruptImage(path, "record 0 does not decode as PagemapHead (range table)") from None
            values = getattr(part, name)
            if name == "state" and not valid.issuperset(values):
                i = next(i for i, st in enumerate(values) if st not in valid)
                raise CorruptImage(path, f"range {i}: PageRange.state holds unknown value {values[i]} "
                                         "(written by a newer ckpt?)")
            columns.append(array.array(code, values))
            del values, part
        lengths = [len(c) for c in columns]
        if len(set(lengths)) != 1:
            raise CorruptImage(path, "range table columns differ in length: " + "/".join(map(str, lengths)))
        return Pagemap(head.owner, head.pages_file, head.page_size, head.chunk_size, chunks, *columns), head, cost
    ranges = []
    for i, payload in enumerate(payloads[1:], 1):  # format 1: a record per range
        r = _parse(path, i, pagemap_pb2.PageRange, payload)
        if r.state not in valid:
            raise CorruptImage(path, f"record {i}: PageRange.state holds unknown value {r.state} (written by a newer ckpt?)")
        ranges.append(PageRange(r.vaddr, r.nr_pages, PageState(r.state), r.data_offset))
    pm = Pagemap.from_ranges(head.owner, head.pages_file, head.page_size, head.chunk_size, chunks, ranges)
    return pm, head, cost


def _parse(path: str, index: int, cls: type[MessageT], payload: bytes | memoryview) -> MessageT:
    message = cls()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise CorruptImage(path, f"record {index} does not decode as {cls.__name__}: {exc}") from None
    return message


def iter_stream(reader: ChunkReader, pagemap: Pagemap, wanted: Sequence[tuple[int, int, int]]) -> Iterator[tuple[int, memoryview]]:
    """Yield (vaddr, bytes) for ``wanted`` = sorted (data_offset, vaddr, nbytes) pieces.

    Each chunk is loaded (and checked) at most once; a piece that spans chunks
    is yielded in parts (cut by :func:`chunk_pieces`).  Views are valid until
    the next item.  The chunks needed are announced to the reader first
    (:meth:`ChunkReader.plan`), so the next ones are decompressed while the
    caller handles the current one.
    """
    jobs = chunk_pieces(reader.path, pagemap, wanted)
    reader.plan([index for index, _ in jobs])
    for index, pieces in jobs:
        raw = reader.load(index)
        for vaddr, start, take in pieces:
            yield vaddr, raw[start : start + take]


def chunk_pieces(path: str, pagemap: Pagemap, wanted: Sequence[tuple[int, int, int]]
                 ) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """``wanted`` (sorted (data_offset, vaddr, nbytes)) as [(chunk index, [(vaddr, start in chunk, nbytes)])].

    Nothing is loaded: :func:`iter_stream` loads the chunks in this order, and
    callers with threads of their own can load and use each chunk's pieces on
    any thread, in any order.
    """
    chunks = pagemap.chunks
    starts = chunks.data_offsets if isinstance(chunks, ChunkTable) else [c.data_offset for c in chunks]
    out: list[tuple[int, list[tuple[int, int, int]]]] = []
    for data_offset, vaddr, nbytes in wanted:
        while nbytes > 0:
            index = bisect.bisect_right(starts, data_offset) - 1
            if index < 0:
                raise CorruptImage(path, f"page data at stream offset {data_offset:#x} is in no chunk")
            chunk = pagemap.chunks[index]
            start = data_offset - chunk.data_offset
            if start >= chunk.raw_length:
                raise CorruptImage(path, f"page data at stream offset {data_offset:#x} is past the last chunk")
            take = min(nbytes, chunk.raw_length - start)
            if not out or out[-1][0] != index:
                out.append((index, []))
            out[-1][1].append((vaddr, start, take))
            data_offset += take
            vaddr += take
            nbytes -= take
    return out


class Image:
    """An image directory whose inventory has been read and checked."""

    def __init__(self, path: str, inventory: inventory_pb2.Inventory, format_version: int) -> None:
        self.path = path
        self.inventory = inventory
        self.format_version = format_version
        self.files: dict[str, FileDigest] = {
            f.name: FileDigest(f.name, f.size, bytes(f.sha256)) for f in inventory.files
        }
        self._last_pagemap: tuple[str, Pagemap] | None = None  # see pagemap()
        #: SHA-256 of inventory.img (its end marker): pins every record file, so it names this image's content.
        self.inventory_sha256 = b""

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_sizes: bool = True) -> Image:
        """Read ``path/inventory.img``; raise NotAnImage / CorruptImage when it is not a usable image.

        With ``check_sizes`` every listed file must exist with its recorded size
        (``verify`` turns it off: it examines each file itself and lists them all).
        """
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            raise NotAnImage(path, "no such directory")
        if not os.path.isdir(path):
            raise NotAnImage(path, "not a directory (an image is a directory holding inventory.img)")
        inv_path = os.path.join(path, kinds.INVENTORY.template)
        if not os.path.lexists(inv_path):
            raise NotAnImage(path, "not a ckpt image: no inventory.img")
        data = read_file(inv_path, max_size=bounds.MAX_INVENTORY_SIZE)
        version, messages = read_record_file(inv_path, kinds.INVENTORY, data)
        if len(messages) != 1:
            raise CorruptImage(inv_path, f"holds {len(messages)} records, expected exactly 1 Inventory")
        inv = messages[0]
        assert isinstance(inv, inventory_pb2.Inventory)
        if inv.format_version != version:
            raise CorruptImage(inv_path, f"records format {inv.format_version} but its header says {version}")
        compat.check_required(inv_path, inv)
        sealing.note_image(path, inv, data)  # an encrypted image needs its key; with a key, every image must be
        if inv.kind not in (k.value for k in ImageKind):
            raise CorruptImage(inv_path, f"invalid image kind {inv.kind}")
        if inv.page_size <= 0 or inv.page_size & (inv.page_size - 1):
            raise CorruptImage(inv_path, f"invalid page size {inv.page_size}")
        for f in inv.files:
            if os.path.basename(f.name) != f.name or f.name in ("", ".", "..", kinds.INVENTORY.template):
                raise CorruptImage(inv_path, f"lists an invalid file name {f.name!r}")
            if not check_sizes:
                continue
            # A stat per file is cheap and catches a cut-off copy before any command
            # (even `show`, which never reads page data) trusts the image.
            file_path = os.path.join(path, f.name)
            try:
                st = os.lstat(file_path)
            except FileNotFoundError:
                raise CorruptImage(file_path, "missing (listed in inventory.img)") from None
            except OSError as exc:
                raise CorruptImage(file_path, f"cannot read: {exc.strerror}") from None
            framing.require_regular(file_path, st.st_mode)
            if st.st_size != f.size:
                raise CorruptImage(file_path, f"size is {st.st_size} bytes, inventory.img says {f.size} (truncated or extended)")
        image = cls(path, inv, version)
        image.inventory_sha256 = bytes(data[-32:])
        return image

    # -- inventory -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self.inventory.image_id

    @property
    def kind(self) -> ImageKind:
        return ImageKind(self.inventory.kind)

    @property
    def page_size(self) -> int:
        return self.inventory.page_size

    @property
    def created_ns(self) -> int:
        return self.inventory.created_ns

    @property
    def parent(self) -> ParentLink | None:
        if not self.inventory.HasField("parent"):
            return None
        return ParentLink(self.inventory.parent.path, self.inventory.parent.image_id)

    @property
    def processes(self) -> tuple[ProcessInfo, ...]:
        return tuple(ProcessInfo.from_pb(p) for p in self.inventory.processes)

    @property
    def inventory_path(self) -> str:
        return os.path.join(self.path, kinds.INVENTORY.template)

    def file_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    def owners(self) -> list[str]:
        """Owners (pids and shared-memory names) that have a pagemap in this image."""
        return sorted(
            (key for key in (kinds.PAGEMAP.match(n) for n in self.files) if key is not None),
            key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k),
        )

    def has(self, name: str) -> bool:
        return name in self.files

    # -- record files ----------------------------------------------------------

    def records(self, name: str) -> list[Message]:
        """Decode one record file of this image (head first) after checking it against the inventory."""
        found = kinds.kind_of_file(name)
        path = self.file_path(name)
        if found is None or not found[0].is_records:
            raise CorruptImage(path, "not a record file of a known kind")
        kind = found[0]
        if kind is kinds.INVENTORY:
            return [self.inventory]
        digest = self.files.get(name)
        if digest is None:
            raise CorruptImage(path, "not in this image (inventory.img does not list it)")
        return self.decode_file(path, kind, digest)[0]

    @staticmethod
    def decode_file(path: str, kind: Kind, digest: FileDigest) -> tuple[list[Message], bounds.Cost]:
        """Read one record file of the recorded size, check header and SHA-256, decode it with its cost.

        A restore reads most files twice (the chain's verification, then the restore itself): the cost of
        bytes of the same kind and SHA-256 is walked once (:data:`_COSTS`)."""
        payloads = Image.payloads(path, kind, digest)
        key = (kind.magic, digest.sha256)
        messages, cost = decode_records_cost(path, kind, payloads, _COSTS.get(key))
        if len(_COSTS) >= _COSTS_KEPT:
            _COSTS.pop(next(iter(_COSTS)))
        _COSTS[key] = cost
        return messages, cost

    @staticmethod
    def payloads(path: str, kind: Kind, digest: FileDigest) -> framing.RecordViews:
        """The records of one file of the recorded size, its header, end marker and SHA-256 checked."""
        data = read_file(path, digest.size, kind=kind)
        if hashlib.sha256(data).digest() != digest.sha256:
            raise CorruptImage(path, "SHA-256 does not match inventory.img: the file was altered")
        return framing.split_records(path, sealing.plain(path, data))

    def process(self, pid: int) -> process_pb2.ProcessEntry:
        return cast(process_pb2.ProcessEntry, self.records(kinds.PROCESS.file_name(pid))[0])

    def threads(self, pid: int) -> list[core_pb2.ThreadCore]:
        return cast(list[core_pb2.ThreadCore], self.records(kinds.CORE.file_name(pid)))

    def mm(self, pid: int) -> tuple[mm_pb2.MmEntry, list[mm_pb2.Vma]]:
        messages = self.records(kinds.MM.file_name(pid))
        return cast(mm_pb2.MmEntry, messages[0]), cast(list[mm_pb2.Vma], messages[1:])

    def fds(self, pid: int) -> list[files_pb2.FdEntry]:
        return cast(list[files_pb2.FdEntry], self.records(kinds.FDS.file_name(pid)))

    def file_entries(self) -> list[files_pb2.FileEntry]:
        return cast(list[files_pb2.FileEntry], self.records(kinds.FILES.file_name()))

    # -- pages -----------------------------------------------------------------

    def pagemap(self, owner: int | str) -> Pagemap:
        """The decoded pagemap of a pid or shared-memory owner.

        The last one decoded is kept (checked when it was read; treat it as
        read-only): a restore asks for a process's pagemap two or three times
        in a row — where each page comes from, which chunks to read, what the
        process now holds — and each was a read, SHA-256 and decode of the file.
        """
        name = kinds.PAGEMAP.file_name(owner)
        last = self._last_pagemap
        if last is not None and last[0] == name:
            return last[1]
        path, digest = self.file_path(name), self.files.get(name)
        if digest is None:
            raise CorruptImage(path, "not in this image (inventory.img does not list it)")
        pm = decode_pagemap(path, self.payloads(path, kinds.PAGEMAP, digest))[0]
        self._last_pagemap = (name, pm)
        return pm

    def chunk_reader(self, pagemap: Pagemap) -> ChunkReader:
        digest = self.files.get(pagemap.pages_file)
        path = self.file_path(pagemap.pages_file)
        if digest is None or kinds.PAGES.match(pagemap.pages_file) != pagemap.owner:
            raise CorruptImage(path, "named by the pagemap but not listed in inventory.img")
        return ChunkReader(path, pagemap, digest.size)

    def iter_pages(self, owner: int | str) -> Iterator[tuple[int, memoryview]]:
        """Yield (vaddr, bytes) for the HERE pages of ``owner``, in address order.

        The bytes come chunk by chunk, each checked before use; a range that
        spans chunks comes in several parts.  Each view is only valid until the
        next item (buffers are reused): copy what you keep.
        """
        pm = self.pagemap(owner)
        wanted = [(r.data_offset, r.vaddr, r.nr_pages * pm.page_size) for r in pm.ranges if r.state is PageState.HERE]
        with self.chunk_reader(pm) as reader:
            yield from iter_stream(reader, pm, wanted)

    def verify(self) -> list[Problem]:
        """Every problem of this image's own files (not its parents); see :mod:`ckpt.image.verify`."""
        from ckpt.image.verify import verify_image

        return verify_image(self)

    def __repr__(self) -> str:
        return f"Image({self.path!r}, id={self.id}, kind={self.kind.name})"
