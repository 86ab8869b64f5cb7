"""hash: per-page content digests; works on any kernel, at the price of reading all tracked memory.

Each collection reads every selected page with ``process_vm_readv`` into one
reused, pre-faulted buffer (first touch of fresh memory runs at ~2 GB/s here,
DESIGN §3) and compares a 64-bit digest per page with the previous one.  Pages
the target shares with a fork are read through ``/proc/PID/mem`` instead
(:class:`~ckpt.kernel.cowread.SharingReader`): pinned, each would be copied.

Digest: the first 8 bytes of SHA-1.  Measured per 4 KiB page from Python on
this machine: sha1 3.0 µs (1.37 GB/s), blake2b-64 5.1 µs (0.80 GB/s), md5
6.3 µs, crc32 1.3 µs but only 32 bits.  Collision resistance against an
adversary is not the point — a page and its own later content — so the
fastest 64-bit digest wins; 2^-64 per changed page of missing a change.

The digests persist between ``ckpt`` invocations in the image file kind
``digests-<owner>.img`` (proto/ckpt/v1/digests.proto: one DigestHead, then one
PageDigests per range, in ckpt's framed-record format), at a path the caller
names.  Not atomic with the target's writes, so the caller follows the same
clear-then-copy rule (base module): a page that changes after it was hashed
shows up again at the next collection.  One gap remains: if the caller copies
content X' of a page hashed as X and the page later returns to exactly X, the
change back is not seen; :meth:`HashTracker.note_copied` closes it by hashing
what was really copied.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from dataclasses import dataclass

from ..errors import CkptError, CorruptImage, TargetGone, translate_oserror
from ..image import framing, kinds, sealing
from ..image.pb import digests_pb2
from ..kernel.arch_x86_64 import PAGE_SIZE
from ..kernel.cowread import SharingReader
from ..procfs.maps import Vma, read_maps
from ..procfs.task import read_starttime
from .base import DirtySet, Interval, RangeSpec, Tracker, TrackingLost, TrackingState, VmaDirty, runs_from_pages, select_ranges

__all__ = ["ALGORITHM", "DIGEST_SIZE", "CHUNK", "HashTracker", "page_digests", "save_digests", "load_digests"]

ALGORITHM = "sha1-64"
DIGEST_SIZE = 8
#: Bytes read per process_vm_readv call: big enough to amortise the call, small enough to stay in cache.
CHUNK = 4 << 20
NO_DIGEST = b"\xff" * DIGEST_SIZE  # an unreadable page: never equal to a real digest of the next round


def _has_no_digest(digests: bytes | bytearray) -> bool:
    """Whether any page-aligned digest in ``digests`` is ``NO_DIGEST`` (an unreadable page)."""
    i = digests.find(NO_DIGEST)
    while i >= 0:
        if i % DIGEST_SIZE == 0:
            return True
        i = digests.find(NO_DIGEST, i + 1)
    return False


def page_digests(data: memoryview, npages: int) -> bytearray:
    """``npages`` digests of the pages at the start of ``data``, back to back."""
    out = bytearray(npages * DIGEST_SIZE)
    sha1 = hashlib.sha1
    for i in range(npages):
        o = i * PAGE_SIZE
        out[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE] = sha1(data[o:o + PAGE_SIZE]).digest()[:DIGEST_SIZE]
    return out


@dataclass
class DigestRange:
    """The digests of the pages of ``[start, end)``, DIGEST_SIZE bytes each (shared with the soft-dirty tracker)."""

    start: int
    end: int
    digests: bytearray

    def digest_at(self, addr: int) -> bytes:
        i = (addr - self.start) // PAGE_SIZE * DIGEST_SIZE
        return bytes(self.digests[i:i + DIGEST_SIZE])


def digest_records(owner: str, ranges: list[DigestRange]) -> list[object]:
    """The records of a ``digests-<owner>.img`` file: one DigestHead, then one PageDigests per range."""
    head = digests_pb2.DigestHead(owner=owner, algorithm=ALGORITHM, digest_size=DIGEST_SIZE, page_size=PAGE_SIZE)
    return [head] + [digests_pb2.PageDigests(vaddr=r.start, nr_pages=(r.end - r.start) // PAGE_SIZE,
                                             digests=bytes(r.digests)) for r in ranges]


def save_digests(path: str | os.PathLike[str], owner: str, ranges: list[DigestRange]) -> None:
    """Write a ``digests-<owner>.img`` file atomically."""
    recs = [m.SerializeToString() for m in digest_records(owner, ranges)]  # type: ignore[attr-defined]
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(framing.encode_file(kinds.DIGESTS.magic, recs))
    os.replace(tmp, path)


def load_digests(path: str | os.PathLike[str]) -> tuple[str, list[DigestRange]]:
    """``(owner, ranges)`` from a digests file; CorruptImage on a foreign algorithm or size."""
    with open(path, "rb") as f:
        data = f.read()
    framing.parse_header(path, data, kinds.DIGESTS.magic, names=kinds.MAGIC_NAMES)
    recs = framing.split_records(path, sealing.plain(os.fspath(path), bytearray(data)))
    if not recs:
        raise CorruptImage(path, "no DigestHead record")
    head = digests_pb2.DigestHead.FromString(bytes(recs[0]))
    if head.algorithm != ALGORITHM or head.digest_size != DIGEST_SIZE or head.page_size != PAGE_SIZE:
        raise CorruptImage(path, f"digests are {head.algorithm}/{head.digest_size}/{head.page_size}, "
                                 f"this ckpt uses {ALGORITHM}/{DIGEST_SIZE}/{PAGE_SIZE}")
    out = []
    for raw in recs[1:]:
        pd = digests_pb2.PageDigests.FromString(bytes(raw))
        if len(pd.digests) != pd.nr_pages * DIGEST_SIZE:
            raise CorruptImage(path, f"range {pd.vaddr:#x}: {len(pd.digests)} digest bytes for {pd.nr_pages} pages")
        out.append(DigestRange(pd.vaddr, pd.vaddr + pd.nr_pages * PAGE_SIZE, bytearray(pd.digests)))
    return head.owner, out


class HashTracker(Tracker):
    """Tracks ``pid`` by comparing page digests; ``digests_path`` is where :meth:`detach` keeps them."""

    method = "hash"

    def __init__(self, pid: int, digests_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(pid)
        self.start_time = read_starttime(pid)
        self.digests_path = os.fspath(digests_path) if digests_path is not None else ""
        self._ranges: list[DigestRange] = []
        self._buf = mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._buf.write(b"\0" * CHUNK)  # pre-fault once; every round reuses these pages
        self._view = memoryview(self._buf)
        self._reader: SharingReader | None = None  # open during a collection
        self._running = False

    def start(self, ranges: RangeSpec | None = None) -> None:
        """Hash every selected page: the first "clear"."""
        self.ranges = ranges or RangeSpec()
        self._running = True
        self.collect()

    @classmethod
    def attach(cls, state: TrackingState) -> "HashTracker":
        self = cls(state.pid, state.digests_path)
        if self.start_time != state.start_time:
            raise TargetGone(state.pid, f"process {state.pid} is not the one tracked (its pid was reused)")
        self.ranges = state.ranges
        try:
            owner, self._ranges = load_digests(state.digests_path)
        except FileNotFoundError:
            raise TrackingLost(state.pid, f"the digests file {state.digests_path} is gone") from None
        except CkptError as e:
            raise TrackingLost(state.pid, f"the digests file is unusable: {e}") from None
        if owner != str(state.pid):
            raise TrackingLost(state.pid, f"the digests file belongs to process {owner}")
        self._previous.ranges = [(r.start, r.end) for r in self._ranges]
        self._running = True
        return self

    def _read(self, start: int, npages: int) -> int:
        """Read ``npages`` from ``start`` into the buffer; the pages read before the first unreadable one.

        A read stops at the first page it cannot read: EFAULT when that is the
        very first page, a short count otherwise.  Under mapping churn this is
        routine — the maps were read a moment ago and the target keeps unmapping
        and moving regions meanwhile.
        """
        assert self._reader is not None
        try:
            got = self._reader.readinto(start, self._view[:npages * PAGE_SIZE])
        except OSError as e:
            if not os.path.exists(f"/proc/{self.pid}"):
                raise TargetGone(self.pid, f"process {self.pid} exited while its pages were hashed") from e
            return 0
        return got // PAGE_SIZE

    def _hash_range(self, start: int, end: int) -> bytearray:
        """Digests of ``[start, end)``; ``NO_DIGEST`` for exactly the pages that could not be read.

        A read that fails at one page marks that page alone and goes on after it:
        giving up on the rest of the chunk would record readable (and possibly
        written) pages as unreadable — the unmapped first page of a stale maps
        entry used to hide every page behind it.
        """
        out = bytearray()
        step = CHUNK // PAGE_SIZE
        addr = start
        while addr < end:
            n = min(step, (end - addr) // PAGE_SIZE)
            got = self._read(addr, n)
            out += page_digests(self._view, got)
            addr += got * PAGE_SIZE
            if got < n:
                out += NO_DIGEST
                addr += PAGE_SIZE
        return out

    def _old_digests(self, start: int, end: int) -> tuple[bytearray, int]:
        """The previous digests of ``[start, end)``, page by page, and how many pages had one.

        A page no earlier collection hashed (the VMA grew: brk, mremap in place,
        a new mapping or thread stack merged with it) gets ``NO_DIGEST``, which
        never equals a real digest: that page alone is dirty, not the whole VMA.
        The comparison is by address and content, so a page whose VMA changed
        identity but whose bytes are the ones recorded is rightly unchanged.
        """
        out = bytearray(NO_DIGEST * ((end - start) // PAGE_SIZE))
        known = 0
        for r in self._ranges:  # sorted by address
            if r.end <= start or r.start >= end:
                continue
            lo, hi = max(r.start, start), min(r.end, end)
            i, j = (lo - r.start) // PAGE_SIZE, (hi - r.start) // PAGE_SIZE
            o = (lo - start) // PAGE_SIZE
            out[o * DIGEST_SIZE:(o + j - i) * DIGEST_SIZE] = r.digests[i * DIGEST_SIZE:j * DIGEST_SIZE]
            known += j - i
        return out, known

    def collect(self) -> DirtySet:
        """Pages whose digest changed since the last collection, plus ranges not tracked before."""
        if not self._running:
            raise CkptError(f"tracking of process {self.pid} is not running (stopped, or never started)")
        try:
            maps = read_maps(self.pid)
        except OSError as e:
            raise translate_oserror(e, self.pid, "reading the maps of") from e
        if read_starttime(self.pid) != self.start_time:
            raise TargetGone(self.pid, f"process {self.pid} exited and its pid was reused")
        selected = select_ranges(maps, self.ranges.include, self.ranges.exclude)
        t0 = time.perf_counter()
        found: list[VmaDirty] = []
        new_ranges: list[DigestRange] = []
        try:
            self._reader = SharingReader(self.pid)
        except OSError as e:
            raise translate_oserror(e, self.pid, "reading the memory of") from e
        try:
            for (start, end), vma in selected:
                found.append(self._one(start, end, vma, new_ranges))
        finally:
            self._reader.close()
            self._reader = None
        self._ranges = new_ranges
        elapsed = time.perf_counter() - t0
        gone = self._previous.gone([r for r, _ in selected])
        return DirtySet(self.method, tuple(found), gone, elapsed, time.monotonic())

    def _one(self, start: int, end: int, vma: Vma, new_ranges: list[DigestRange]) -> VmaDirty:
        """One selected range: hashed now (appended to ``new_ranges``), compared with the last digests."""
        now = self._hash_range(start, end)
        old, known = self._old_digests(start, end)
        new_ranges.append(DigestRange(start, end, now))
        if known == 0:
            return VmaDirty(start, end, vma.path, ((start, (end - start) // PAGE_SIZE),), (), new=True)
        # The shortcut must not swallow unreadable pages: NO_DIGEST == NO_DIGEST, yet a
        # page unreadable in two rounds (e.g. behind an unmapped page) may have been written.
        if old == now and not _has_no_digest(now):
            return VmaDirty(start, end, vma.path)
        pages = [start + i * PAGE_SIZE for i in range(len(now) // DIGEST_SIZE)
                 if now[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE] != old[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]
                 or now[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE] == NO_DIGEST]
        return VmaDirty(start, end, vma.path, runs_from_pages(pages))

    def note_copied(self, addr: int, data: bytes | memoryview) -> None:
        """Record the digests of pages as the caller copied them (closes the X → X' → X gap)."""
        mv = memoryview(data)
        n = len(mv) // PAGE_SIZE
        digests = page_digests(mv, n)
        for k in range(n):
            a = addr + k * PAGE_SIZE
            for r in self._ranges:
                if r.start <= a < r.end:
                    i = (a - r.start) // PAGE_SIZE * DIGEST_SIZE
                    r.digests[i:i + DIGEST_SIZE] = digests[k * DIGEST_SIZE:(k + 1) * DIGEST_SIZE]
                    break

    def state(self) -> TrackingState:
        return TrackingState(self.method, self.pid, self.start_time, digests_path=self.digests_path,
                             include=self.ranges.include, exclude=self.ranges.exclude)

    def detach(self) -> TrackingState:
        """Save the digests at ``digests_path`` for the next process."""
        if not self.digests_path:
            raise CkptError("the hash tracker needs a digests path to keep its state")
        save_digests(self.digests_path, str(self.pid), self._ranges)
        self._running = False
        return self.state()

    def records(self) -> list[object]:
        """The digests as image records, for an image that carries the tracking state."""
        return digest_records(str(self.pid), self._ranges)

    def stop(self) -> None:
        """Forget the digests (the target never knew it was tracked)."""
        self._running = False
        self._ranges = []

    @property
    def tracked(self) -> list[Interval]:
        return [(r.start, r.end) for r in self._ranges]

