"""Writing an image directory: records, page data, inventory, atomic commit.

An image is written into a temporary directory beside its final place (name
starting with ``.``, mode 0700, files 0600 — an image holds the target's
secrets) and renamed into place by :meth:`ImageWriter.commit` only after
every file and the directory are on disk.  ``inventory.img`` is written last
and lists the size and SHA-256 of every other file, computed while the bytes
were written.  Anything that leaves the ``with`` block early — an exception,
Ctrl-C — removes the temporary directory, so a half-written image is never
taken for a complete one.  (A ``kill -9`` can leave a ``.NAME.PID-START.*.tmp``
directory behind; no reader ever opens it, and the next writer in that
directory removes it once the run that made it is gone: the writer holds an
flock on its temporary directory, which the kernel drops when it dies, in any
PID namespace; the pid and start time in the name are for people, and the
test where a file system has no flock.)
Images are written only where no other user can change them (see
:mod:`ckpt.image.dirs`).

Page data is streamed: :class:`PageWriter` copies page runs into chunk
buffers of ``chunk_size`` bytes and hands each full chunk to a
:class:`ChunkCompressor` (two threads: zstandard releases the GIL, so two
frames compress at once on two cores).  At most a few chunks are in flight and
they are written strictly in order, so memory stays bounded whatever the size
of the address space and the bytes on disk are the same as with one thread.

Example::

    with ImageWriter("img/3", kind=ImageKind.INCREMENTAL, parent="img/2") as w:
        w.write_threads(pid, [core_pb2.ThreadCore(tid=pid, ...)])
        with w.pages(pid) as pw:
            pw.add(0x7F0000000000, buf)          # pages copied now
            pw.add_parent(0x7F0000010000, 16)    # unchanged since img/2
            pw.add_zero(0x7F0000020000, 4)
        w.commit(processes=[ProcessInfo(pid, ppid, (pid,))])
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait as futures_wait
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import zstandard

import ckpt
from ckpt.errors import CkptError, ImageError, Unsupported, UsageError
from ckpt.image import bounds, compat, dirs, framing, kinds, sealing, signing
from ckpt.image.kinds import Kind
from ckpt.image.pb import clocks_pb2, core_pb2, cpu_pb2, files_pb2, inventory_pb2, mm_pb2, pagemap_pb2, process_pb2
from ckpt.image.records import Codec, FileDigest, ImageKind, PageState, ProcessInfo
from ckpt.kernel.fileio import fsync_dir, sync_file_range
from ckpt.procfs.task import read_starttime
from ckpt.procfs.timens import read_boot_id

if TYPE_CHECKING:
    from ckpt.resources.host import Kernel

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COMPRESS_LEVEL",
    "ChunkCompressor",
    "ImageWriter",
    "check_compress_level",
    "check_final",
    "hold_dir",
    "make_held_tmp",
    "sweep_stale_tmp",
    "RecordWriter",
    "PageWriter",
    "PagemapStats",
]

#: Upper bound on the raw size of one page-data chunk (one zstd frame).
DEFAULT_CHUNK_SIZE = 4 << 20
#: zstd level 1: ~1 GB/s on heap data here, ratio ~6.7 (DESIGN.md §5).
DEFAULT_COMPRESS_LEVEL = 1
#: Threads compressing chunks.  Two: this machine has two cores, and the writer's
#: own thread (copies, SHA-256, writes) mostly waits on them.
COMPRESS_WORKERS = 2
#: A pages file starts writeback every this many bytes (see _Sink).
WRITEBACK_BYTES = 16 << 20
#: A file closed with less than this not yet written back is left to the commit's fsyncs (see _Sink.finish).
_FINISH_WRITEBACK_MIN = 256 << 10
#: Write buffer of a pages file (record files have 1 MiB): frames bigger than this bypass it.
_FRAME_BUFFER = 64 << 10
#: The all-zero test compares up to this many bytes at once against a zero buffer.
_ZERO_WINDOW = 1 << 20
_FILE_MODE = 0o600
_DIR_MODE = 0o700

log = logging.getLogger(__name__)


def _io_error(path: str, doing: str, exc: OSError) -> CkptError:
    """An I/O failure while writing (full disk, no permission), naming the file; exit code 1."""
    return CkptError(f"{path}: cannot {doing}: {exc.strerror or exc}")


class _Sink:
    """One file being written: counts its size and SHA-256 as the bytes go out."""

    def __init__(self, path: str, *, digest: bool = True, writeback: int = 0, buffer: int = 1 << 20,
                 sync: bool = True) -> None:
        self.path = path
        self._sync = sync  # False: the image is not synced, so no writeback is started either
        self.name = os.path.basename(path)
        # Page data: start writeback every `writeback` bytes, so the disk works while zstd
        # does and the commit's fsync (done with the target still frozen when it is to be
        # ended) finds little left to write.
        self._writeback = writeback
        self._written_back = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, _FILE_MODE)
        except OSError as exc:
            raise _io_error(path, "create", exc) from exc
        try:
            os.fchmod(fd, _FILE_MODE)  # exact mode whatever the umask
            self._file = open(fd, "wb", buffering=buffer)  # noqa: SIM115 - closed in finish/abort
        except BaseException:
            os.close(fd)
            raise
        # Page data is checked chunk by chunk (CRC-32, zstd's own checksum): hashing
        # the whole file too would cost a dump ~0.2 CPU-s per GiB for nothing more.
        self._sha = hashlib.sha256() if digest else None
        self.size = 0
        self.digest: FileDigest | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write and account ``data`` (a bytes-like of single bytes)."""
        try:
            self._file.write(data)
        except OSError as exc:
            raise _io_error(self.path, "write", exc) from exc
        if self._sha is not None:
            self._sha.update(data)
        self.size += len(data)
        if self._writeback and self.size - self._written_back >= self._writeback:
            try:
                self._file.flush()
                sync_file_range(self._file.fileno(), self._written_back, self.size - self._written_back)
            except OSError as exc:
                raise _io_error(self.path, "write", exc) from exc
            self._written_back = self.size

    def sha256_so_far(self) -> bytes:
        assert self._sha is not None, "a sink without digest has no SHA-256"
        return self._sha.copy().digest()

    def finish(self) -> FileDigest:
        """Flush, start writeback and close; return the file's digest.  :func:`_sync_all` makes it durable.

        One fsync per file, in turn, was most of a small process's dump (six
        files each, a journal commit per fsync): the image's files are synced
        together at commit instead.  Writeback is started here only for a big
        tail: for a small file it cost as much as the write (~55 µs each, six
        files a process), in turn, where the commit's fsyncs run side by side.
        (fsyncing each file on other threads as soon as it was finished made
        the dump slower: they held up the writes still to come.)
        """
        if self.digest is None:
            try:
                self._file.flush()
                if self._sync and self.size - self._written_back >= _FINISH_WRITEBACK_MIN:
                    sync_file_range(self._file.fileno(), self._written_back, self.size - self._written_back)
                self._file.close()
            except OSError as exc:
                raise _io_error(self.path, "write", exc) from exc
            self.digest = FileDigest(self.name, self.size, self._sha.digest() if self._sha is not None else b"")
        return self.digest

    def abort(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # fsync needs no write access
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _io_error(path, "sync", exc) from exc
    finally:
        os.close(fd)


def _sync_all(paths: Sequence[str]) -> None:
    """fsync every file, several at a time: the filesystem folds concurrent fsyncs into fewer journal commits."""
    if len(paths) <= 2:
        for path in paths:
            _fsync_path(path)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(paths)), thread_name_prefix="ckpt-fsync") as pool:
        for _ in pool.map(_fsync_path, paths):
            pass


class RecordWriter:
    """Writes one record file: header, one protobuf message per record, end marker.

    What the records will cost a reader to decode is added up as they are
    written (:mod:`ckpt.image.bounds`): a file the reader would refuse is
    refused here, with ``Unsupported``, so ckpt never writes an image it cannot read.
    """

    def __init__(self, sink: _Sink, kind: Kind, *, version: int = framing.FILE_FORMAT_VERSION,
                 sealer: sealing.ImageCipher | None = None) -> None:
        # ``sealer``: the file is sealed with the image's key (ckpt/image/sealing.py).
        self._sink: _Sink | sealing.SealedRecords = sink if sealer is None else sealing.SealedRecords(
            sink, sealer.file(sink.name), sealer.segment_size)
        self._kind = kind
        self._count = 0
        self.cost = bounds.Cost()
        self._sink.write(framing.pack_header(kind.magic, version | (framing.SEALED if sealer is not None else 0)))

    @property
    def name(self) -> str:
        return self._sink.name

    @property
    def closed(self) -> bool:
        return self._sink.digest is not None

    def write(self, message: object) -> None:
        """Append one message; the first must be the kind's head type when it has one."""
        if self.closed:
            raise ValueError(f"{self.name} is already closed")
        expected = self._kind.head if (self._count == 0 and self._kind.head is not None) else self._kind.record
        assert expected is not None
        if not isinstance(message, expected):
            where = "first record (head)" if expected is self._kind.head else "record"
            raise TypeError(f"{self.name}: {where} must be {expected.__name__}, got {type(message).__name__}")
        payload = message.SerializeToString(deterministic=True)
        self.cost.add_message(message)  # type: ignore[arg-type]
        excess = self.cost.excess()
        if excess:
            raise Unsupported(f"{self.name} {excess}", hint="a restore would refuse such an image; the process is too "
                                                            "large or too fragmented for this ckpt")
        self._sink.write(framing.pack_record(payload))
        self._count += 1

    def close(self) -> FileDigest:
        if not self.closed:
            if self._kind.head is not None and self._count == 0:
                raise ValueError(f"{self.name}: a {self._kind.name} file needs its {self._kind.head.__name__} record")
            self._sink.write(framing.pack_trailer(self._sink.sha256_so_far()))
        return self._sink.finish()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()


class ChunkCompressor:
    """Compresses page-data chunks into zstd frames on a small pool of threads.

    Why threads: zstandard drops the GIL while it compresses, and zstd -1 is the
    one thing slower than reading memory (~1 GB/s per core against 5 GB/s), so
    two threads compressing independent frames nearly double a dump's speed.
    Each thread has its own ``ZstdCompressor`` (one must not be shared between
    threads); every frame is compressed on its own, so the output is byte for
    byte what one thread would produce.  The CRC-32 of each frame is computed
    in the worker too (zlib releases the GIL).  Since format 2 frames carry no
    zstd content checksum: its XXH64 runs over the raw bytes and cost zstd -1
    ~10 % of its speed on heap-like data, where the CRC-32 of the (6x smaller)
    frame costs a third of that and checks the same stored bytes.
    """

    def __init__(self, level: int, workers: int = COMPRESS_WORKERS, *, adaptive: bool = True) -> None:
        self.level = level
        self.workers = max(1, workers)
        #: A chunk whose samples do not shrink is stored raw (codec NONE): see :func:`_incompressible`.
        self.adaptive = adaptive
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def _compress(self, raw: memoryview, seal: Callable[[bytes], bytes] | None
                  ) -> tuple[bytes | memoryview, int, Codec]:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = zstandard.ZstdCompressor(
                level=self.level, write_checksum=False, write_content_size=True
            )
        stored: bytes | memoryview
        if self.adaptive and _incompressible(raw, self._local):
            stored, codec = raw, Codec.NONE  # (a view of the caller's buffer: written before it is reused)
        else:
            stored, codec = cctx.compress(raw), Codec.ZSTD
        if seal is not None:  # an encrypted image: sealed here too, on this thread (AES-GCM drops the GIL)
            stored = seal(stored)
        return stored, zlib.crc32(stored), codec

    def submit(self, raw: memoryview, seal: Callable[[bytes], bytes] | None = None
               ) -> Future[tuple[bytes | memoryview, int, Codec]]:
        """Start compressing ``raw`` (which must stay untouched until the future is done and its result
        written: an incompressible chunk's result is ``raw`` itself), then ``seal`` it."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckpt-zstd")
        return self._pool.submit(self._compress, raw, seal)

    def shutdown(self) -> None:
        """Stop the threads (waits for the frames being compressed; drops queued ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


#: :func:`_incompressible` compresses this many bytes from each of 3 places of a chunk ...
_SAMPLE = 16 << 10
#: ... and stores the chunk raw when they shrink to no less than this share of their size.
_RAW_RATIO = 0.92


def _incompressible(raw: memoryview, local: threading.local) -> bool:
    """Whether zstd would gain (almost) nothing on the chunk ``raw``, judged from 48 KiB of it at level 1.

    Compressing random bytes costs zstd -1 ~0.2 s a GiB for nothing, and
    the restore then decompresses them; three samples (start, middle, end)
    cost ~1 % of that.  A chunk mixing random and compressible pages is
    judged by its samples: it may be stored raw while a little could have
    been saved, or compressed for little — never wrong, only less tight.
    """
    n = raw.nbytes
    if n < 4 * _SAMPLE:
        return False
    probe = getattr(local, "probe", None)
    if probe is None:
        probe = local.probe = zstandard.ZstdCompressor(level=1, write_checksum=False, write_content_size=False)
    mid = (n // 2) & ~4095
    sample = b"".join((raw[:_SAMPLE], raw[mid:mid + _SAMPLE], raw[n - _SAMPLE:]))
    return len(probe.compress(sample)) >= _RAW_RATIO * len(sample)


#: Views of at most this many pages are tested page by page in _zero_runs.
_SHORT_RUN = 8


def _zero_runs(view: memoryview, ps: int, zero_window: bytes, zero_page: bytes) -> list[tuple[int, int]]:
    """Byte spans ``[start, stop)`` of the all-zero pages of ``view``, merged.

    ``bytes.startswith`` accepts any buffer and compares with memcmp, so a zero
    window checks a whole run at ~30 GB/s without copying; comparing memoryviews
    goes byte by byte (~1 GB/s).  In a window that is not all zero, only pages
    whose first byte is zero can be zero: one strided copy of the first bytes and
    ``bytes.find`` skip the others in C, keeping the Python loop off pages of
    ordinary data.  The test samples four bytes per page (ORed together as
    big integers, in C): heap pages often start with a zero byte, rarely with
    four zeros at spread-out places.
    """
    runs: list[tuple[int, int]] = []
    size = view.nbytes
    step = len(zero_window)
    is_zero_window, is_zero_page = zero_window.startswith, zero_page.startswith
    if size <= _SHORT_RUN * ps:
        # A few scattered pages (a delta's dirty pages): one memcmp per page beats the sampling below.
        for off in range(0, size, ps):
            if is_zero_page(view[off : off + ps]):
                if runs and runs[-1][1] == off:
                    runs[-1] = (runs[-1][0], off + ps)
                else:
                    runs.append((off, off + ps))
        return runs

    def mark(start: int, stop: int) -> None:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))

    for base in range(0, size, step):
        window = view[base : base + step]
        if is_zero_window(window):
            mark(base, base + window.nbytes)
            continue
        n = window.nbytes // ps
        sample = 0
        for at in (0, ps // 3, 2 * ps // 3 + 1, ps - 1):
            sample |= int.from_bytes(window[at::ps].tobytes(), "little")
        firsts = sample.to_bytes(n, "little")
        i = firsts.find(0)
        while i >= 0:
            off = i * ps
            if is_zero_page(window[off : off + ps]):
                mark(base + off, base + off + ps)
            i = firsts.find(0, i + 1)
    return runs


@dataclass(frozen=True)
class PagemapStats:
    """What one PageWriter stored."""

    owner: str
    pages_here: int
    pages_parent: int
    pages_zero: int
    chunks: int
    raw_bytes: int
    stored_bytes: int


class _BufferPool:
    """Chunk buffers (anonymous mappings), made once and reused.

    Why reused: process_vm_readv into never-touched memory takes a page fault
    per 4 KiB and runs ~3x slower than into resident memory (bench "fresh
    buffer" row).  Not pre-faulted, though (nor a ``bytearray``, which zeroes
    all of itself): touching every page first costs as much as the first
    read's faults, and a small process (a tree's) fills a fraction of a
    buffer.  Made resident by use, a buffer costs only what is used: making
    one of 4 MiB took ~1.7 ms, now the first MiB read into it ~0.3 ms more.
    ``limit`` buffers at most; :meth:`get` waits for one to come back from the
    writer thread.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self._limit = limit
        self._made = 0
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()

    def get(self, failed: Callable[[], None]) -> mmap.mmap:
        """A free buffer; ``failed()`` is called while waiting and raises if the writer died."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._made < self._limit:
            self._made += 1
            return mmap.mmap(-1, self.size)  # zero pages until written: faulted in as used
        while True:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                failed()

    def put(self, buf: mmap.mmap) -> None:
        self._free.put(buf)


@functools.lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    """``size`` zero bytes, made once: each bytes(1 MiB) zeroed its memory anew (~0.4 ms a process of a tree)."""
    return bytes(size)


class PageWriter:
    """Streams the pages of one owner (a pid, or a shared-memory name).

    Runs must be added in increasing address order and must not overlap; each is
    page aligned.  Two ways in:

    * :meth:`add` takes bytes now (the caller may reuse its buffer as soon as it
      returns): they are copied into a chunk buffer;
    * :meth:`borrow` lends a chunk buffer to read pages straight into (the
      dumper's process_vm_readv), :meth:`add_borrowed` says which pages are
      where in it, :meth:`submit_borrowed` hands it on as one frame: no copy.

    All-zero pages are recorded as ZERO (unless ``detect_zero`` is off); a
    borrowed buffer keeps their bytes in its frame, where zstd stores them in a
    few bytes, and no range points at them.  Frames are compressed on the
    :class:`ChunkCompressor`'s threads and written, in order, by one writer
    thread (file write and SHA-256 off the caller's thread).  :meth:`close`
    writes the last chunk and ``pagemap-<owner>.img``.
    """

    def __init__(
        self,
        owner: str,
        pagemap: _Sink,
        pages: _Sink,
        *,
        page_size: int,
        chunk_size: int,
        compressor: ChunkCompressor | None,
        has_parent: bool,
        detect_zero: bool,
        buffers: "_BufferPool | None" = None,
        frame_writer: ThreadPoolExecutor | None = None,
        sealer: sealing.ImageCipher | None = None,
    ) -> None:
        self.owner = owner
        # An encrypted image: every chunk sealed under the pages file's key, its index as nonce.
        self._sealer = sealer
        self._chunk_cipher = sealer.file(pages.name) if sealer is not None else None
        self._frames = 0  # chunks handed on so far: the next one's index
        self._seal_buf: bytearray | None = None  # see _frame_now
        self._pagemap = pagemap
        self._pages = pages
        self._ps = page_size
        self._chunk_size = chunk_size
        self._cctx = compressor
        self._codec = Codec.ZSTD if compressor is not None else Codec.NONE
        self._has_parent = has_parent
        self._detect_zero = detect_zero
        self._zero_page = _zeros(page_size)
        self._zero_window = _zeros(max(page_size, min(_ZERO_WINDOW, chunk_size)))
        # One buffer being filled, one per compression worker, one queued, one being written.
        workers = compressor.workers if compressor is not None else 0
        # ``buffers``: the image writer's pool, shared by its page writers.  A buffer borrowed
        # goes back as soon as its frame is written, so writers filled that way may stay open
        # side by side; one filled by add() holds its partial chunk until close(): close it
        # before filling the next, or they wait for each other's buffers.
        self._own_pool = buffers is None
        self._pool = buffers if buffers is not None else _BufferPool(chunk_size, workers + 3)
        self._buf: mmap.mmap | None = None  # the chunk being filled by add()
        self._fill = 0
        self._borrowed: mmap.mmap | None = None
        self._borrow_base = 0  # stream offset of the borrowed buffer's first byte
        self._borrow_used = 0  # end of the last HERE bytes in it
        # One thread writes the frames, so in stream order.  ``frame_writer``: the image writer's,
        # shared by its page writers (a thread started per process cost a small one ~0.3 ms).
        self._own_writer = frame_writer is None
        self._writer: ThreadPoolExecutor | None = frame_writer
        self._last_frame: Future[None] | None = None  # the last frame handed to the writer thread
        self._failed: BaseException | None = None  # the writer thread's first error
        self._stream = 0       # stream offset of the next byte of page data
        self._written = 0      # bytes of page data in frames written to the file
        self._end = 0          # end address of the last range
        # Ranges as flat u64 quadruples (vaddr, nr_pages, state, data_offset): compact for millions.
        self._ranges = array.array("Q")
        self._chunks: list[pagemap_pb2.PageChunk] = []
        self._counts = {PageState.HERE: 0, PageState.PARENT: 0, PageState.ZERO: 0}
        self._stats: PagemapStats | None = None
        #: What decoding the pagemap will cost a reader (bounds.Cost.bytes), once closed.
        self.decode_cost = 0
        pages.write(framing.pack_header(kinds.PAGES.magic, framing.FILE_FORMAT_VERSION
                                        | (framing.SEALED if sealer is not None else 0)))

    # -- adding ranges -------------------------------------------------------

    def add(self, vaddr: int, data: bytes | bytearray | memoryview) -> None:
        """Store the pages starting at ``vaddr`` (``len(data)`` a multiple of the page size)."""
        view = memoryview(data)
        if not view.contiguous:
            raise ValueError("page data must be a contiguous buffer")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        size = view.nbytes
        if size % self._ps:
            raise ValueError(f"page data at {vaddr:#x} is {size} bytes, not a multiple of {self._ps}")
        if size == 0:
            return
        if self._borrowed is not None:
            raise ValueError("add() while a borrowed buffer is out: submit_borrowed() first")
        npages = size // self._ps
        self._check_next(vaddr, npages)
        if not self._detect_zero:
            self._add_here(vaddr, view)
            return
        pos = 0
        for start, stop in _zero_runs(view, self._ps, self._zero_window, self._zero_page):
            if start > pos:
                self._add_here(vaddr + pos, view[pos:start])
            self._append(vaddr + start, (stop - start) // self._ps, PageState.ZERO, 0)
            pos = stop
        if pos < size:
            self._add_here(vaddr + pos, view[pos:])

    def add_zero(self, vaddr: int, npages: int) -> None:
        """Record ``npages`` pages of zeros at ``vaddr`` (nothing is stored)."""
        self._check_next(vaddr, npages)
        self._append(vaddr, npages, PageState.ZERO, 0)

    def add_parent(self, vaddr: int, npages: int) -> None:
        """Record ``npages`` pages at ``vaddr`` as unchanged since the parent image."""
        if not self._has_parent:
            raise ValueError(f"pages of {self.owner} marked as in the parent, but the image has no parent")
        self._check_next(vaddr, npages)
        self._append(vaddr, npages, PageState.PARENT, 0)

    # -- borrowed buffers (no copy) ---------------------------------------------

    def borrow(self) -> memoryview:
        """Lend a free chunk buffer (``chunk_size`` bytes, resident) to read pages into.

        Waits while every buffer is in flight: that is the dump's back-pressure.
        """
        self._check_open()
        if self._borrowed is not None:
            raise ValueError("a buffer is already borrowed")
        if self._fill:
            self._emit_buffer()  # pages copied by add() go first, in their own frame
        self._borrowed = self._pool.get(self._raise_failed)
        self._borrow_base, self._borrow_used = self._stream, 0
        return memoryview(self._borrowed)

    def add_borrowed(self, vaddr: int, offset: int, nbytes: int) -> None:
        """The ``nbytes`` at ``offset`` of the borrowed buffer are the pages at ``vaddr``.

        Offsets must grow from call to call, as addresses do.
        """
        buf = self._borrowed
        if buf is None:
            raise ValueError("add_borrowed() without borrow()")
        if nbytes <= 0 or nbytes % self._ps or offset % self._ps or offset < self._borrow_used or offset + nbytes > len(buf):
            raise ValueError(f"bad borrowed run: {nbytes} bytes at offset {offset} (used up to {self._borrow_used})")
        self._check_next(vaddr, nbytes // self._ps)
        self._add_borrowed_checked(vaddr, offset, nbytes)

    def _add_borrowed_checked(self, vaddr: int, offset: int, nbytes: int) -> None:
        buf = self._borrowed
        assert buf is not None
        base = self._borrow_base + offset
        pos = 0
        if self._detect_zero:
            view = memoryview(buf)[offset : offset + nbytes]
            for start, stop in _zero_runs(view, self._ps, self._zero_window, self._zero_page):
                if start > pos:
                    self._append(vaddr + pos, (start - pos) // self._ps, PageState.HERE, base + pos)
                    self._borrow_used = offset + start
                self._append(vaddr + start, (stop - start) // self._ps, PageState.ZERO, 0)
                pos = stop
        if pos < nbytes:
            self._append(vaddr + pos, (nbytes - pos) // self._ps, PageState.HERE, base + pos)
            self._borrow_used = offset + nbytes

    def add_runs(self, runs: Sequence[tuple[int, int, PageState, int]]) -> None:
        """Many runs in address order in one call: ``(vaddr, nbytes, state, offset)``.

        HERE: the bytes at ``offset`` of the borrowed buffer (as :meth:`add_borrowed`);
        PARENT and ZERO: as :meth:`add_parent` / :meth:`add_zero` (``offset`` unused).
        The same checks as those, with a call per run less: a delta of scattered
        pages records thousands of alternating HERE and PARENT runs.
        """
        self._check_open()
        ps, here, parent = self._ps, PageState.HERE, PageState.PARENT
        buf = self._borrowed
        for vaddr, nbytes, state, offset in runs:
            if nbytes <= 0 or nbytes % ps or vaddr % ps or vaddr < self._end or vaddr + nbytes > 1 << 64:
                self._check_next(vaddr, nbytes // ps)  # raises with the precise reason
                raise ValueError(f"bad page run: {nbytes} bytes at {vaddr:#x}")
            if state is here:
                if buf is None:
                    raise ValueError("HERE runs without borrow()")
                if offset % ps or offset < self._borrow_used or offset + nbytes > len(buf):
                    raise ValueError(f"bad borrowed run: {nbytes} bytes at offset {offset} "
                                     f"(used up to {self._borrow_used})")
                self._add_borrowed_checked(vaddr, offset, nbytes)
            elif state is parent:
                if not self._has_parent:
                    raise ValueError(f"pages of {self.owner} marked as in the parent, but the image has no parent")
                self._append(vaddr, nbytes // ps, state, 0)
            else:
                self._append(vaddr, nbytes // ps, PageState.ZERO, 0)

    def submit_borrowed(self) -> None:
        """Hand the borrowed buffer on: its bytes up to the last HERE page become one frame."""
        buf, self._borrowed = self._borrowed, None
        if buf is None:
            raise ValueError("submit_borrowed() without borrow()")
        n = self._borrow_used  # trailing zero or unused bytes are left out; none if all were zero
        if n == 0:
            self._pool.put(buf)
            return
        self._stream = self._borrow_base + n
        self._emit(buf, n)

    def release_borrowed(self) -> None:
        """Give a borrowed buffer back unused (error paths)."""
        if self._borrowed is not None:
            self._pool.put(self._borrowed)
            self._borrowed = None

    # -- internals -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._stats is not None:
            raise ValueError(f"pages of {self.owner} already closed")
        self._raise_failed()

    def _check_next(self, vaddr: int, npages: int) -> None:
        self._check_open()
        if npages <= 0:
            raise ValueError(f"empty page range at {vaddr:#x}")
        if vaddr % self._ps:
            raise ValueError(f"address {vaddr:#x} is not page aligned")
        if vaddr < self._end:
            raise ValueError(
                f"pages must be added in increasing address order without overlap: {vaddr:#x} < {self._end:#x}"
            )
        if vaddr + npages * self._ps > 1 << 64:
            raise ValueError(f"page range at {vaddr:#x} runs past the end of the address space")

    def _add_here(self, vaddr: int, view: memoryview) -> None:
        size = view.nbytes
        self._append(vaddr, size // self._ps, PageState.HERE, self._stream)
        pos = 0
        cs = self._chunk_size
        while pos < size:
            if self._cctx is None and self._fill == 0 and size - pos >= cs:
                # Stored as is and written now: straight from the caller's buffer, no copy.
                raw = view[pos : pos + cs]
                self._write_chunk(*self._frame_now(raw), raw.nbytes)
                pos += cs
                continue
            if self._buf is None:
                self._buf = self._pool.get(self._raise_failed)
            take = min(cs - self._fill, size - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == cs:
                self._emit_buffer()
        self._stream += size

    def _emit_buffer(self) -> None:
        """Hand the chunk filled by add() on and start a new one."""
        buf, n = self._buf, self._fill
        self._buf, self._fill = None, 0
        if buf is not None and n:
            self._emit(buf, n)

    def _emit(self, buf: mmap.mmap, n: int) -> None:
        """Frame the first ``n`` bytes of ``buf``: compressed and written behind the caller's back, or written now."""
        view = memoryview(buf)[:n]
        if self._cctx is None:
            try:
                self._write_chunk(*self._frame_now(view), n)
            finally:
                self._pool.put(buf)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-write-{self.owner}")
        seal = None
        if self._chunk_cipher is not None:
            seal = functools.partial(self._chunk_cipher.seal_chunk, self._frames)
        self._frames += 1
        self._last_frame = self._writer.submit(self._store_frame, self._cctx.submit(view, seal), buf, n)

    def _frame_now(self, raw: memoryview) -> tuple[memoryview, int]:
        """An uncompressed chunk as stored (sealed in an encrypted image) and its CRC-32.

        Written at once, so a sealed chunk goes through one buffer, reused (a new 4 MiB per
        chunk costs its page faults)."""
        if self._chunk_cipher is not None:
            if self._seal_buf is None:
                self._seal_buf = bytearray(self._chunk_size + sealing.TAG_SIZE)
            out = memoryview(self._seal_buf)[: raw.nbytes + sealing.TAG_SIZE]
            self._chunk_cipher.seal_chunk_into(self._frames, raw, out)
            raw = out
        self._frames += 1
        return raw, zlib.crc32(raw)

    def _store_frame(self, frame: Future[tuple[bytes, int]], buf: mmap.mmap, n: int) -> None:
        """Writer thread: wait for one compressed frame and write it (file order = stream order)."""
        try:
            stored, crc, codec = frame.result()
            if self._failed is None:
                self._write_chunk(stored, crc, n, codec)
        except BaseException as exc:  # kept for the caller's thread: raised by its next call
            if self._failed is None:
                self._failed = exc
        finally:
            self._pool.put(buf)

    def _raise_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _write_chunk(self, stored: bytes | memoryview, crc: int, raw_length: int, codec: Codec | None = None) -> None:
        self._chunks.append(
            pagemap_pb2.PageChunk(
                offset=self._pages.size,
                length=len(stored) if isinstance(stored, bytes) else stored.nbytes,
                data_offset=self._written,
                raw_length=raw_length,
                codec=int(self._codec if codec is None else codec),
                crc32=crc,
            )
        )
        self._pages.write(stored)
        self._written += raw_length

    def _append(self, vaddr: int, npages: int, state: PageState, data_offset: int) -> None:
        r = self._ranges
        self._counts[state] += npages
        self._end = vaddr + npages * self._ps
        if r:
            pv, pn, pst, pdo = r[-4], r[-3], r[-2], r[-1]
            if pst == state and pv + pn * self._ps == vaddr and (
                state != PageState.HERE or pdo + pn * self._ps == data_offset
            ):
                r[-3] = pn + npages
                return
        if len(r) >= 4 * bounds.MAX_VALUES:
            raise Unsupported(f"the memory of {self.owner} needs more than {bounds.MAX_VALUES} page ranges, "
                              "more than a restore reads from one pagemap")
        r.extend((vaddr, npages, int(state), data_offset))

    def _drain(self) -> None:
        """Wait until every frame handed on is written (a shared writer thread takes them in order:
        this writer's last one done, all of them are)."""
        if self._last_frame is not None:
            futures_wait([self._last_frame])  # done, failed into _failed, or cancelled by an abort
            self._last_frame = None
        if self._own_writer and self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    # -- finishing -----------------------------------------------------------

    def close(self) -> PagemapStats:
        """Write the last chunk and the pagemap; idempotent."""
        if self._stats is not None:
            return self._stats
        if self._borrowed is not None:
            raise ValueError("close() while a borrowed buffer is out: submit_borrowed() first")
        self._emit_buffer()
        self._drain()
        self._raise_failed()
        self._pages.finish()
        head = pagemap_pb2.PagemapHead(
            owner=self.owner,
            pages_file=self._pages.name,
            page_size=self._ps,
            chunk_size=self._chunk_size,
            chunks=self._chunks,
            pages_here=self._counts[PageState.HERE],
            pages_parent=self._counts[PageState.PARENT],
            pages_zero=self._counts[PageState.ZERO],
        )
        r, t = self._ranges, head.ranges
        t.SetInParent()  # present even when empty: marks format 2
        t.vaddr.extend(r[0::4])
        t.nr_pages.extend(r[1::4])
        t.state.extend(r[2::4])
        t.data_offset.extend(r[3::4])
        writer = RecordWriter(self._pagemap, kinds.PAGEMAP, sealer=self._sealer)
        writer.write(head)
        writer.close()
        self.decode_cost = writer.cost.bytes
        self._stats = PagemapStats(
            owner=self.owner,
            pages_here=self._counts[PageState.HERE],
            pages_parent=self._counts[PageState.PARENT],
            pages_zero=self._counts[PageState.ZERO],
            chunks=len(self._chunks),
            raw_bytes=self._written,
            stored_bytes=self._pages.size - framing.HEADER_SIZE,
        )
        if self._own_pool:
            self._pool = _BufferPool(self._chunk_size, 0)  # release the chunk buffers early
        return self._stats

    @property
    def closed(self) -> bool:
        return self._stats is not None

    @property
    def chunk_size(self) -> int:
        """Bytes of one chunk buffer (see :meth:`borrow`)."""
        return self._chunk_size

    def _abort(self) -> None:
        # The ImageWriter has stopped the compression threads: frames not compressed are cancelled.
        if self._failed is None:
            self._failed = CkptError(f"pages of {self.owner}: the image was aborted")
        self._drain()
        self._pages.abort()
        self._pagemap.abort()

    def __enter__(self) -> PageWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()


#: zstd's fastest "negative" level (ZSTD_minCLevel), the other end of the range from MAX_COMPRESSION_LEVEL.
MIN_COMPRESS_LEVEL = -(1 << 17)


#: ``--fsync``: when an image is synced to disk before ckpt says it is done.
FSYNC_POLICIES = ("never", "end", "always")
_FSYNC: contextvars.ContextVar[str] = contextvars.ContextVar("ckpt_fsync", default="end")


@contextlib.contextmanager
def fsync_policy(policy: str | None) -> Iterator[None]:
    """Dumps and pre-dumps inside follow ``policy`` (``--fsync``; None: the default, ``end``)."""
    if policy is not None and policy not in FSYNC_POLICIES:
        raise UsageError(f"--fsync {policy!r}: one of {', '.join(FSYNC_POLICIES)}")
    token = _FSYNC.set(policy or "end")
    try:
        yield
    finally:
        _FSYNC.reset(token)


def fsync_wanted(*, ends_target: bool) -> bool:
    """Whether an image is fsynced under the ``--fsync`` policy in force: ``always``; ``never``; ``end`` (the
    default) only when the dump ends the target, whose only copy is then the image — ``-R``, ``-s``,
    pre-dumps and a migration's images (sent on, or its rounds) stay in the page cache, as CRIU leaves
    them.  An image a crash tore is refused at restore (its files' sizes, digests and chunk CRCs), never
    taken as complete."""
    policy = _FSYNC.get()
    return policy == "always" or (policy == "end" and ends_target)


def check_compress_level(level: int | None) -> None:
    """UsageError for a zstd level out of range (None: uncompressed); checked before any work."""
    if level is not None and not MIN_COMPRESS_LEVEL <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise UsageError(f"--compress {level}: zstd levels go from 1 (fastest) to {zstandard.MAX_COMPRESSION_LEVEL} "
                         f"(smallest), or negative down to {MIN_COMPRESS_LEVEL} for faster still",
                         hint="the default, 1, compresses heap-like memory ~6x at ~1 GB/s; --no-compress stores pages raw")


def check_final(final_dir: str | os.PathLike[str]) -> None:
    """Refuse early (before any work) a destination that commit could not use, or that another user could change."""
    final_dir = os.path.abspath(os.fspath(final_dir))
    parent = os.path.dirname(final_dir)
    dirs.check_dir_to_write(final_dir)
    if not os.path.isdir(parent):
        raise ImageError(final_dir, f"cannot create the image: directory {parent} does not exist")
    if os.path.lexists(final_dir):
        if not os.path.isdir(final_dir) or os.path.islink(final_dir):
            raise ImageError(final_dir, "already exists and is not a directory; refusing to overwrite it")
        if os.listdir(final_dir):
            raise ImageError(final_dir, "already exists and is not empty; refusing to overwrite it")


#: A temporary image directory: ``.NAME.PID-START.RANDOM.tmp`` (START: the writer's start time, clock ticks).
_TMP_NAME = re.compile(r"\.(?P<base>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.[a-z0-9_]+\.tmp")


def _starttime(pid: int) -> int | None:
    """The start time of process ``pid``, or None if there is no such process."""
    try:
        return read_starttime(pid)
    except (CkptError, OSError, ValueError):
        return None


def _run_tag() -> str:
    """``PID-START``: names this run in its temporary directories, so a later run can tell it is gone."""
    return f"{os.getpid()}-{_starttime(os.getpid()) or 0}"


def hold_dir(tmp_dir: str) -> int | None:
    """An fd holding an flock on the directory ``tmp_dir`` while its writer lives (None: this file system has no
    flock); the kernel drops it with the fd, however the writer ends."""
    fd = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _writer_gone(path: str, pid: int, start: int) -> bool:
    """Whether the run that made the temporary directory ``path`` is gone: its flock is free (else, with no
    flock here, the process it names is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True  # dropped with its holder (the lock goes with the fd, closed below)
    except BlockingIOError:
        return False
    except OSError:
        return _starttime(pid) != start
    finally:
        os.close(fd)


def make_held_tmp(parent_dir: str, base: str) -> tuple[str, int | None]:
    """A new 0700 temporary directory ``.BASE.PID-START.*.tmp`` in ``parent_dir``, after removing those of
    killed runs (:func:`sweep_stale_tmp`); with the fd of its flock (close it once the directory is gone)."""
    sweep_stale_tmp(parent_dir)
    path = tempfile.mkdtemp(prefix=f".{base}.{_run_tag()}.", suffix=".tmp", dir=parent_dir)
    os.chmod(path, _DIR_MODE)
    return path, hold_dir(path)


def sweep_stale_tmp(parent_dir: str) -> list[str]:
    """Remove the temporary image directories that killed ckpt runs left in ``parent_dir``; returns them.

    A directory counts only if it has the name ckpt gives them, is ours and no
    link, and the run that made it is gone (:func:`_writer_gone`): a running
    ckpt's directory is never touched.  Each removal is logged as a warning.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent_dir))
    except OSError:
        return removed  # creating the temporary directory will report the problem
    for entry in entries:
        m = _TMP_NAME.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.geteuid():
            continue
        pid, start = int(m["pid"]), int(m["start"])
        if not _writer_gone(entry.path, pid, start):
            continue  # that run is still going
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
            log.warning("removed %s, left by a ckpt run (pid %d) that was killed while writing an image",
                        entry.path, pid)
    return removed


class ImageWriter:
    """Writes one image directory; use as a context manager and end with :meth:`commit`.

    ``parent`` is the directory of the image this one is a delta of (required for
    INCREMENTAL, forbidden for FULL, optional for PRE_DUMP); it is recorded as a
    path relative to ``final_dir`` together with the parent's image id.
    ``compress_level`` None stores page data uncompressed (codec NONE).
    ``image_id``, ``created_ns``, ``kernel_release``, ``hostname``, ``boot_id``
    and ``cpu`` default to the real values; tests pin them for reproducible images.
    ``cpu``: "here" records this machine's CPU (what a restore checks), a record
    records that one (a merge keeps its source's), None records none.
    ``kernel``: the same for the kernel (:class:`ckpt.resources.host.Kernel`:
    uname and the vDSO/vvar areas); None records only ``kernel_release``.
    """

    def __init__(
        self,
        final_dir: str | os.PathLike[str],
        *,
        kind: ImageKind,
        parent: str | os.PathLike[str] | None = None,
        tracking: str = "none",
        compress_level: int | None = DEFAULT_COMPRESS_LEVEL,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        page_size: int = mmap.PAGESIZE,
        detect_zero: bool = True,
        image_id: str | None = None,
        created_ns: int | None = None,
        kernel_release: str | None = None,
        hostname: str | None = None,
        boot_id: str | None = None,
        cpu: cpu_pb2.CpuFeatures | Literal["here"] | None = "here",
        kernel: Kernel | Literal["here"] | None = "here",
        sync: bool = True,
    ) -> None:
        self.final_dir = os.path.abspath(os.fspath(final_dir))
        #: fsync the files and directories at commit (``--fsync``, :func:`fsync_wanted`); False: the page
        #: cache only, and no writeback started while writing.
        self.sync = sync
        self.kind = ImageKind(kind)
        #: The key the image is signed with (:func:`ckpt.image.signing.signing` around the command), or None.
        self._signer = signing.current_signer()
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not a power of two")
        if chunk_size <= 0 or chunk_size % page_size or chunk_size > bounds.MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} must be a positive multiple of {page_size} up to {bounds.MAX_CHUNK_SIZE}")
        check_compress_level(compress_level)
        self.page_size = page_size
        self.chunk_size = chunk_size
        self.compress_level = compress_level
        self.detect_zero = detect_zero
        self.tracking = tracking
        self.image_id = image_id if image_id is not None else uuid.uuid4().hex
        if len(self.image_id) != 32 or any(c not in "0123456789abcdef" for c in self.image_id):
            raise ValueError(f"image id must be 32 lower-case hex digits, got {self.image_id!r}")
        self._created_ns = created_ns
        #: The image's keys when it is encrypted (:func:`ckpt.image.sealing.encrypting` around the command), or None.
        self._sealer = sealing.new_image_cipher(self.image_id)
        uname = os.uname()
        self._kernel_release = uname.release if kernel_release is None else kernel_release
        self._hostname = uname.nodename if hostname is None else hostname
        self._boot_id = read_boot_id() if boot_id is None else boot_id
        if cpu == "here":
            from ckpt.resources import cpu as cpu_features  # late: the image format does not need it to load

            cpu = cpu_features.to_pb(cpu_features.here())
        self._cpu = cpu
        if kernel == "here":
            from ckpt.resources import host  # late, as for the CPU

            kernel = host.here()
        self._kernel = kernel
        if kernel is not None and kernel_release is None:
            self._kernel_release = kernel.release
        self._required: set[str] = set()  # see require()

        self.parent_link: inventory_pb2.ParentLink | None = None
        if parent is not None:
            if self.kind is ImageKind.FULL:
                raise UsageError(f"{self.final_dir}: a FULL image has no parent (use INCREMENTAL for a delta)")
            from ckpt.image.reader import Image  # late: reader imports this module's constants

            parent_abs = os.path.abspath(os.fspath(parent))
            parent_image = Image.open(parent_abs)
            if parent_image.page_size != page_size:
                raise UsageError(f"{parent_abs}: parent has page size {parent_image.page_size}, this image {page_size}")
            self.parent_link = inventory_pb2.ParentLink(
                path=os.path.relpath(parent_abs, self.final_dir), image_id=parent_image.id
            )
        elif self.kind is ImageKind.INCREMENTAL:
            raise UsageError(f"{self.final_dir}: an INCREMENTAL image needs a parent")

        check_final(self.final_dir)
        self.tmp_dir: str | None = None
        self._tmp_lock: int | None = None  # holds an flock on tmp_dir while we write it (see sweep_stale_tmp)
        self._sinks: dict[str, _Sink] = {}
        self._buffers: _BufferPool | None = None
        self._record_writers: list[RecordWriter] = []
        self._page_writers: dict[str, PageWriter] = {}
        self._cctx: ChunkCompressor | None = None
        self._frame_writer: ThreadPoolExecutor | None = None  # writes every page writer's frames, in order
        self._done = False  # committed or aborted

    # -- context management --------------------------------------------------

    def __enter__(self) -> ImageWriter:
        if self.tmp_dir is not None:
            raise RuntimeError("ImageWriter is not reentrant")
        parent_dir, base = os.path.split(self.final_dir)
        try:
            self.tmp_dir, self._tmp_lock = make_held_tmp(parent_dir, base)
        except OSError as exc:
            raise _io_error(parent_dir, "create the image's temporary directory", exc) from exc
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._done:
            return
        self.abort()
        if exc_type is None:
            raise RuntimeError(f"image {self.final_dir} left without commit(); nothing was written")

    def abort(self) -> None:
        """Discard everything written so far (the temporary directory goes away)."""
        if self._cctx is not None:
            self._cctx.shutdown()
        for writer in self._page_writers.values():
            writer._abort()
        self._stop_frame_writer()
        for sink in self._sinks.values():
            sink.abort()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._release_tmp()
        self._done = True

    def _release_tmp(self) -> None:
        if self._tmp_lock is not None:
            os.close(self._tmp_lock)
            self._tmp_lock = None

    # -- writing files -------------------------------------------------------

    def _require_open(self) -> str:
        if self.tmp_dir is None:
            raise RuntimeError("use ImageWriter as a context manager (with ImageWriter(...) as w:)")
        if self._done:
            raise RuntimeError(f"image {self.final_dir} is already committed or aborted")
        return self.tmp_dir

    def _new_sink(self, name: str, *, digest: bool = True, writeback: int = 0, buffer: int = 1 << 20) -> _Sink:
        tmp = self._require_open()
        if name in self._sinks or name == kinds.INVENTORY.template:
            raise ValueError(f"{name} is already written (or reserved)")
        sink = _Sink(os.path.join(tmp, name), digest=digest, writeback=writeback if self.sync else 0, buffer=buffer,
                     sync=self.sync)
        self._sinks[name] = sink
        return sink

    def require(self, feature: str) -> None:
        """Record that restoring this image right needs ``feature`` (a name of :data:`compat.FEATURES`).

        A reader that does not know it refuses the image instead of restoring
        it wrong; one that predates the list refuses it by its format number.
        """
        if feature not in compat.FEATURES:
            raise ValueError(f"unknown image feature {feature!r}: add it to ckpt.image.compat.FEATURES")
        self._required.add(feature)

    def records(self, name: str, kind: Kind | bytes) -> RecordWriter:
        """Open a record file to write message by message (for large tables)."""
        if isinstance(kind, bytes):
            if kind not in kinds.BY_MAGIC:
                raise ValueError(f"unknown kind magic {kind!r}")
            kind = kinds.BY_MAGIC[kind]
        if not kind.is_records or kind is kinds.INVENTORY:
            raise ValueError(f"{kind.name} files are not written with records() (use pages() / commit())")
        if kind.match(name) is None:
            raise ValueError(f"file name {name!r} does not fit kind {kind.name} ({kind.template})")
        writer = RecordWriter(self._new_sink(name), kind, sealer=self._sealer)
        self._record_writers.append(writer)
        return writer

    def write_records(self, name: str, kind: Kind | bytes, messages: Iterable[object]) -> FileDigest:
        """Write a whole record file (the head first, for kinds that have one)."""
        writer = self.records(name, kind)
        for message in messages:
            writer.write(message)
        return writer.close()

    def write_process(self, pid: int, entry: process_pb2.ProcessEntry) -> FileDigest:
        return self.write_records(kinds.PROCESS.file_name(pid), kinds.PROCESS, [entry])

    def write_threads(self, pid: int, threads: Sequence[core_pb2.ThreadCore]) -> FileDigest:
        return self.write_records(kinds.CORE.file_name(pid), kinds.CORE, threads)

    def write_mm(self, pid: int, mm: mm_pb2.MmEntry, vmas: Iterable[mm_pb2.Vma]) -> FileDigest:
        return self.write_records(kinds.MM.file_name(pid), kinds.MM, [mm, *vmas])

    def write_fds(self, pid: int, fds: Iterable[files_pb2.FdEntry]) -> FileDigest:
        return self.write_records(kinds.FDS.file_name(pid), kinds.FDS, fds)

    def write_files(self, entries: Iterable[files_pb2.FileEntry]) -> FileDigest:
        return self.write_records(kinds.FILES.file_name(), kinds.FILES, entries)

    def pages(self, owner: int | str, *, detect_zero: bool | None = None) -> PageWriter:
        """A PageWriter for the memory of a pid (or a shared-memory owner name)."""
        key = kinds.owner_name(owner)
        if key in self._page_writers:
            raise ValueError(f"pages of {key} are already being written")
        if self.compress_level is not None and self._cctx is None:
            self._cctx = ChunkCompressor(self.compress_level)
        if self._buffers is None:  # made once for all owners (a tree has one per process)
            self._buffers = _BufferPool(self.chunk_size, (self._cctx.workers if self._cctx is not None else 0) + 3)
        if self._cctx is not None and self._frame_writer is None:
            self._frame_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-write")
        writer = PageWriter(
            key,
            self._new_sink(kinds.PAGEMAP.file_name(key)),
            # Chunks have CRCs (no digest).  Frames are written whole, mostly past any buffer: a small
            # one, as a tree's writers stay open side by side (a short last frame was copied into 1 MiB).
            # A signed image hashes its page data too: chunk CRCs are no proof against a forger.
            self._new_sink(kinds.PAGES.file_name(key), digest=self._signer is not None,
                           writeback=WRITEBACK_BYTES, buffer=_FRAME_BUFFER),
            page_size=self.page_size,
            chunk_size=self.chunk_size,
            compressor=self._cctx,
            has_parent=self.parent_link is not None,
            detect_zero=self.detect_zero if detect_zero is None else detect_zero,
            buffers=self._buffers,
            frame_writer=self._frame_writer,
            sealer=self._sealer,
        )
        self._page_writers[key] = writer
        return writer

    def _stop_frame_writer(self) -> None:
        """End the frame-writing thread (after every page writer is closed or aborted: nothing is queued)."""
        if self._frame_writer is not None:
            self._frame_writer.shutdown(wait=True, cancel_futures=True)
            self._frame_writer = None

    # -- commit --------------------------------------------------------------

    def commit(
        self, processes: Iterable[ProcessInfo] = (), extra: Mapping[str, str] | None = None,
        clocks: clocks_pb2.Clocks | None = None,
    ) -> str:
        """Write the inventory, sync everything, and rename the image into place.

        ``clocks``: the tree's clocks at the dump (:mod:`ckpt.resources.timens`; a dump's, not a pre-dump's).
        Returns the final directory.  Raises ``ImageError`` if the final
        directory appeared meanwhile and is not empty.
        """
        tmp = self._require_open()
        procs = list(processes)
        pids = {p.pid for p in procs}
        if len(pids) != len(procs):
            raise ValueError("a pid is listed twice in processes")
        try:
            for writer in self._page_writers.values():
                writer.close()
        finally:
            if self._cctx is not None:
                self._cctx.shutdown()  # threads are started again if another writer needs them
            self._stop_frame_writer()
        for rw in self._record_writers:
            rw.close()
        cost = sum(rw.cost.bytes for rw in self._record_writers) + sum(
            pw.decode_cost for pw in self._page_writers.values())
        if cost > bounds.MAX_IMAGE_DECODE_COST:
            raise Unsupported(f"{self.final_dir}: its files would take ~{cost >> 20} MiB to decode, more than the "
                              f"{bounds.MAX_IMAGE_DECODE_COST >> 20} MiB a restore allows for one image")
        for name in self._sinks:
            found = kinds.kind_of_file(name)
            if found and found[0].scope is kinds.Scope.PROCESS and int(found[1]) not in pids:
                raise ValueError(f"{name} belongs to pid {found[1]}, which is not in the process list")

        inv = inventory_pb2.Inventory(
            format_version=framing.FILE_FORMAT_VERSION,  # set below, once the required features are known
            ckpt_version=ckpt.__version__,
            kernel_release=self._kernel_release,
            created_ns=time.time_ns() if self._created_ns is None else self._created_ns,
            image_id=self.image_id,
            kind=int(self.kind),
            tracking=self.tracking,
            processes=[p.to_pb() for p in procs],
            files=[
                inventory_pb2.FileDigest(name=d.name, size=d.size, sha256=d.sha256)
                for d in sorted((s.finish() for s in self._sinks.values()), key=lambda d: d.name)
            ],
            arch=self._kernel.machine if self._kernel is not None and self._kernel.machine else os.uname().machine,
            page_size=self.page_size,
            hostname=self._hostname,
            boot_id=self._boot_id,
            extra=dict(extra or {}),
        )
        if self.parent_link is not None:
            inv.parent.CopyFrom(self.parent_link)
        if self._cpu is not None:
            inv.cpu.CopyFrom(self._cpu)
        if self._kernel is not None:
            inv.kernel_version = self._kernel.version
            if self._kernel.areas:
                inv.kernel_areas.CopyFrom(self._kernel.to_pb())
        if clocks is not None:
            inv.clocks.CopyFrom(clocks)
        if self._sealer is not None:
            inv.encryption.CopyFrom(self._sealer.to_pb())
            self._required.add("encrypted")
        inv.required_features.extend(compat.required_features(inv, self._required))
        inv.format_version = compat.format_for(inv.required_features)
        sink = _Sink(os.path.join(tmp, kinds.INVENTORY.template))
        self._sinks[kinds.INVENTORY.template] = sink
        writer = RecordWriter(sink, kinds.INVENTORY, version=inv.format_version)
        writer.write(inv)
        writer.close()
        written = [sink.path for sink in self._sinks.values()]
        if self._signer is not None or self._sealer is not None:
            with open(sink.path, "rb") as f:
                inventory = f.read()
            if self._sealer is not None:  # the inventory, in clear, is bound to the key too
                written.append(self._sealer.write_mac(tmp, inventory))
            if self._signer is not None:  # before the rename: a complete image is signed, or is no image at all
                written.append(signing.sign_inventory(tmp, inventory, self._signer))
        if self.sync:
            _sync_all(written)
            try:
                fsync_dir(tmp)
            except OSError as exc:
                raise _io_error(tmp, "sync", exc) from exc
        try:
            os.rename(tmp, self.final_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise ImageError(self.final_dir, "already exists and is not empty; refusing to overwrite it") from exc
            if exc.errno == errno.ENOTDIR:
                raise ImageError(self.final_dir, "already exists and is not a directory; refusing to overwrite it") from exc
            raise ImageError(self.final_dir, f"cannot move the finished image into place: {exc.strerror}") from exc
        self._done = True
        self.tmp_dir = None
        self._release_tmp()
        if self.sync:
            try:
                fsync_dir(os.path.dirname(self.final_dir))
            except OSError as exc:
                raise _io_error(os.path.dirname(self.final_dir), "sync", exc) from exc
        return self.final_dir
