"""Typed, immutable views of the image metadata that the store layer defines.

The per-resource messages (VMAs, threads, files...) are used as the protobuf
classes of ``ckpt.image.pb``; what the store itself interprets — processes,
parent links, file digests, pagemaps — is exposed as frozen dataclasses here,
so callers never depend on protobuf's mutable objects for it.
"""

from __future__ import annotations

import array
import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from ckpt.image.framing import MadeOnAccess
from ckpt.image.pb import inventory_pb2, pagemap_pb2

__all__ = [
    "ImageKind",
    "PageState",
    "Codec",
    "TrackingInfo",
    "ProcessInfo",
    "ParentLink",
    "FileDigest",
    "PageRange",
    "PageChunk",
    "ChunkTable",
    "Pagemap",
    "PageSource",
]


class ImageKind(enum.IntEnum):
    """What an image holds (values are those of ``Inventory.Kind``)."""

    FULL = inventory_pb2.Inventory.FULL
    PRE_DUMP = inventory_pb2.Inventory.PRE_DUMP
    INCREMENTAL = inventory_pb2.Inventory.INCREMENTAL


class PageState(enum.IntEnum):
    """Where the bytes of a page range are (values of ``PageRange.State``)."""

    HERE = pagemap_pb2.PageRange.HERE
    PARENT = pagemap_pb2.PageRange.PARENT
    ZERO = pagemap_pb2.PageRange.ZERO


class Codec(enum.IntEnum):
    """How a chunk of page data is stored (values of ``ckpt.v1.Codec``)."""

    NONE = pagemap_pb2.CODEC_NONE
    ZSTD = pagemap_pb2.CODEC_ZSTD


@dataclass(frozen=True)
class TrackingInfo:
    """How dirty tracking of one process is kept alive until the next dump."""

    method: str
    parked_fd: int = -1
    uffd_inode: int = 0
    include: tuple[tuple[int, int], ...] | None = None  # tracked address ranges; None: the whole process
    exclude: tuple[tuple[int, int], ...] = ()
    #: soft-dirty: the VMAs at the clear, each (start, end, perms, offset, dev_major, dev_minor, inode).
    layout: tuple[tuple[int, int, str, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class ProcessInfo:
    """A process listed in the inventory."""

    pid: int
    ppid: int
    threads: tuple[int, ...]
    start_time: int = 0
    tracking: TrackingInfo | None = None
    pgid: int = 0
    sid: int = 0
    zombie: bool = False
    wait_status: int = 0  # a zombie's: what its parent's waitpid will get
    comm: str = ""        # a zombie's name
    shares_files: bool = False  # one descriptor table with its parent (CLONE_FILES)

    def to_pb(self) -> inventory_pb2.ProcessRef:
        ref = inventory_pb2.ProcessRef(pid=self.pid, ppid=self.ppid, threads=self.threads, start_time=self.start_time,
                                       pgid=self.pgid, sid=self.sid, zombie=self.zombie,
                                       wait_status=self.wait_status, comm=self.comm, shares_files=self.shares_files)
        if self.tracking is not None:
            ref.tracking.CopyFrom(
                inventory_pb2.TrackingState(
                    method=self.tracking.method,
                    parked_fd=self.tracking.parked_fd,
                    uffd_inode=self.tracking.uffd_inode,
                    include=[inventory_pb2.AddressRange(start=s, end=e) for s, e in self.tracking.include or ()],
                    exclude=[inventory_pb2.AddressRange(start=s, end=e) for s, e in self.tracking.exclude],
                    layout=[inventory_pb2.VmaKey(start=k[0], end=k[1], perms=k[2], offset=k[3], dev_major=k[4],
                                                 dev_minor=k[5], inode=k[6]) for k in self.tracking.layout],
                )
            )
        return ref

    @classmethod
    def from_pb(cls, ref: inventory_pb2.ProcessRef) -> ProcessInfo:
        tracking = None
        if ref.HasField("tracking"):
            t = ref.tracking
            tracking = TrackingInfo(t.method, t.parked_fd, t.uffd_inode,
                                    tuple((r.start, r.end) for r in t.include) or None,
                                    tuple((r.start, r.end) for r in t.exclude),
                                    tuple((k.start, k.end, k.perms, k.offset, k.dev_major, k.dev_minor, k.inode)
                                          for k in t.layout))
        return cls(ref.pid, ref.ppid, tuple(ref.threads), ref.start_time, tracking, ref.pgid, ref.sid, ref.zombie,
                   ref.wait_status, ref.comm, ref.shares_files)


@dataclass(frozen=True)
class ParentLink:
    """A delta's reference to its parent: where it is and which image it must be."""

    path: str      # relative to the child's directory
    image_id: str


@dataclass(frozen=True)
class FileDigest:
    """Size and SHA-256 of one file of an image, as recorded in the inventory."""

    name: str
    size: int
    sha256: bytes


@dataclass(frozen=True)
class PageRange:
    """``nr_pages`` pages from ``vaddr`` in one state; HERE ranges say where their bytes are."""

    vaddr: int
    nr_pages: int
    state: PageState
    data_offset: int = 0  # HERE: position of the first byte in the page-data stream

    def end(self, page_size: int) -> int:
        return self.vaddr + self.nr_pages * page_size


@dataclass(frozen=True)
class PageChunk:
    """One stored chunk of the page-data stream (see pagemap.proto)."""

    offset: int       # in the pages file
    length: int       # stored bytes
    data_offset: int  # position in the page-data stream
    raw_length: int
    codec: Codec
    crc32: int


class ChunkTable(MadeOnAccess[PageChunk]):
    """A pagemap's chunk table as columns (~37 bytes a chunk); each :class:`PageChunk` is made on access.

    A table of a few hundred thousand chunks (a TiB of pages, or a forged
    pagemap) as PageChunk objects was ~0.3 KiB each.
    """

    def __init__(self, chunks: Iterable[tuple[int, int, int, int, Codec, int]] = ()) -> None:
        self._q = array.array("Q")  # offset, length, data_offset, raw_length
        self._codec = array.array("B")
        self._crc = array.array("L")
        for offset, length, data_offset, raw_length, codec, crc in chunks:
            self._q.extend((offset, length, data_offset, raw_length))
            self._codec.append(int(codec))
            self._crc.append(crc)

    def __len__(self) -> int:
        return len(self._codec)

    def _make(self, index: int) -> PageChunk:
        q = self._q
        return PageChunk(q[4 * index], q[4 * index + 1], q[4 * index + 2], q[4 * index + 3],
                         Codec(self._codec[index]), self._crc[index])

    @property
    def data_offsets(self) -> Sequence[int]:
        """The stream offset of every chunk (no PageChunk made)."""
        return self._q[2::4]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChunkTable({len(self)} chunks)"


@dataclass(frozen=True)
class Pagemap:
    """The decoded ``pagemap-<owner>.img`` of one image.

    The ranges are kept as four columns (as format 2 stores them): a pre-dump
    reads its parent's pagemap to know what the parent holds, and building an
    object per range cost more than the rest.  :attr:`ranges` builds the
    :class:`PageRange` objects on first use.
    """

    owner: str
    pages_file: str
    page_size: int
    chunk_size: int
    chunks: Sequence[PageChunk]
    vaddrs: Sequence[int]
    nr_pages: Sequence[int]
    states: Sequence[int]
    data_offsets: Sequence[int]

    @classmethod
    def from_ranges(cls, owner: str, pages_file: str, page_size: int, chunk_size: int,
                    chunks: Sequence[PageChunk], ranges: Sequence[PageRange]) -> Pagemap:
        return cls(owner, pages_file, page_size, chunk_size, chunks, array.array("Q", (r.vaddr for r in ranges)),
                   array.array("Q", (r.nr_pages for r in ranges)), array.array("B", (int(r.state) for r in ranges)),
                   array.array("Q", (r.data_offset for r in ranges)))

    @cached_property
    def ranges(self) -> tuple[PageRange, ...]:
        states = {int(s): s for s in PageState}
        return tuple(PageRange(v, n, states[st], d)
                     for v, n, st, d in zip(self.vaddrs, self.nr_pages, self.states, self.data_offsets))

    def count(self, state: PageState) -> int:
        """Number of pages in ``state`` (summed in C: a pagemap may hold a million ranges)."""
        return sum(itertools.compress(self.nr_pages, bytes(self.states).translate(_ONLY[int(state)])))


#: bytes.translate tables: 1 where a state byte is the given state, else 0.
_ONLY = {int(s): bytes(int(i == s) for i in range(256)) for s in PageState}


@dataclass(frozen=True)
class PageSource:
    """Where restore gets a run of pages after resolving a chain.

    ``image`` indexes the chain list (0 = base); None means the pages are zero.
    ``data_offset`` is the position in that image's page-data stream.
    """

    vaddr: int
    nr_pages: int
    image: int | None
    data_offset: int = 0

    @property
    def is_zero(self) -> bool:
        return self.image is None
