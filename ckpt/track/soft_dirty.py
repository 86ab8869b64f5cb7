"""soft-dirty: ``/proc/PID/clear_refs`` "4" + the soft-dirty bit, for kernels with CONFIG_MEM_SOFT_DIRTY.

The back-end of kernels without UFFD_FEATURE_WP_ASYNC (before 6.7: Debian 12's
6.1, Ubuntu 22.04's 5.15, RHEL 9).  The bits are read from batched
``/proc/PID/pagemap`` reads (bit 55), never through PAGEMAP_SCAN: that ioctl
exists only from 6.7, and off its PAGE_IS_WRITTEN fast path some kernels
mis-report zapped entries.

WEAKNESS (the reason uffd-wp exists, DESIGN §1–2): the *clear* is
whole-process — writing "4" to clear_refs resets the bit on every page of the
target, selected or not — and it is a separate step from the *get*.  A write
between reading the bits and clearing them would be lost, so each collection
freezes the target for the get and the clear together: the target stops for
the whole scan, which uffd-wp never needs (under the final dump's freeze it
is stopped already).  Two trackers on one process would clear each other's bits.

The bits' known gaps, and how each is covered:

* A page zapped (MADV_DONTNEED) after a clear has no pte left to carry the
  bit: non-present, non-swapped pages are reported as holes on every
  collection (their content is what the backing gives: zero for anonymous
  memory, the file's page for a private file mapping).
* A zapped page that is then only *read* maps the zero page (or the huge zero
  page) without the bit: a page mapping a zero page is reported written.
* A transparent huge page carries one bit for its 512 pages: a write to any
  of them sets it in the PMD, and the clear keeps the PMD whole, so every
  page of the 2 MiB reads as written at each collection (a 4 MiB area with a
  few writes a second was copied whole by every pre-dump).  After each clear,
  with the target still frozen, every PMD-aligned 2 MiB block of a private VMA
  that read as wholly written is split into small pages (process_madvise
  MADV_COLD over its first page: a partial range splits a THP the process
  alone maps, and only that page is aged); their ptes inherit the cleared bit,
  so the next writes mark single pages.  A THP khugepaged collapses later is
  wholly dirty (the kernel sets the bit; khugepaged rebuilds a split THP
  within seconds) and split at that collection; where the split is refused
  (a THP shared with a fork child, no process_madvise or CAP_SYS_NICE) it
  stays whole.  So that such a block does not cost 512 pages each time, the
  tracker keeps a digest of every page of the blocks it has seen wholly
  written (hash tracker's digests, refreshed for the pages the bits report,
  under the same freeze): a wholly written block with digests is narrowed to
  the pages whose content changed.  They travel in the image (digests file).
* VM_SOFTDIRTY, the per-VMA "all dirty" flag new VMAs carry, is lost or
  inherited when VMAs merge, split or move: the layout (:func:`vma_key` of
  every tracked VMA) is recorded at each clear, and a VMA that is not in it
  at the next collection — new, merged, split, mremapped, re-created with
  other bounds or backing — is wholly dirty, whatever its bits say.  The
  layout travels in the state (and the image) to the next ckpt run.

Not usable on this project's host (no CONFIG_MEM_SOFT_DIRTY); the guests of
``make test-kernels`` run it.  :func:`ckpt.track.open_tracker` selects it when
the soft-dirty probe passes and uffd-wp does not.  The kernel side is behind
:class:`SoftDirtyKernel` so the shared logic is unit-tested with a fake.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

from ..errors import CkptError, translate_oserror
from ..kernel import pagemap as pm
from ..kernel.arch_x86_64 import HPAGE_PMD_SIZE, PAGE_SIZE
from ..kernel.mman import MADV_COLD
from ..kernel.pidfd import pidfd_open
from ..kernel.cowread import SharingReader
from ..kernel.vm import process_madvise
from ..procfs.maps import Vma, read_maps
from ..procfs.status import read_status
from ..procfs.task import read_starttime
from .base import (
    DirtySet, RangeSpec, Run, Tracker, TrackingLost, TrackingState, VmaDirty, VmaKey, merge_runs, select_ranges,
    subtract_intervals, vma_key,
)
from .hash import NO_DIGEST, DIGEST_SIZE, DigestRange, digest_records, load_digests, page_digests

__all__ = ["SoftDirtyKernel", "ProcSoftDirty", "SoftDirtyTracker", "CLEAR_REFS_SOFT_DIRTY", "huge_blocks"]

#: Written to /proc/PID/clear_refs: clear the soft-dirty bits of every pte (Documentation/admin-guide/mm/soft-dirty.rst).
CLEAR_REFS_SOFT_DIRTY = "4"
_PRESENT = pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED
_WANT = _PRESENT | pm.PAGE_IS_SOFT_DIRTY | pm.PAGE_IS_PFNZERO
#: Page category byte → b"w" written (present or swapped, with the bit or on a zero page), b"h" hole
#: (neither present nor swapped), b"." clean; runs of w and h are then found by a C regex.
_CLASS = bytes(
    (ord("h") if not c & _PRESENT else ord("w") if c & (pm.PAGE_IS_SOFT_DIRTY | pm.PAGE_IS_PFNZERO) else ord("."))
    for c in range(256))
_W_OR_H = re.compile(rb"w+|h+")
_BLOCK_PAGES = HPAGE_PMD_SIZE // PAGE_SIZE


class SoftDirtyKernel(Protocol):
    """The five kernel operations the tracker needs; the seam a test replaces.

    ``scan`` reports the pages of ``[start, end)`` that are written (categories
    with PRESENT or SWAPPED, and SOFT_DIRTY or PFNZERO) and the holes (no
    PRESENT/SWAPPED); it may report clean pages too.
    """

    def read_maps(self, pid: int) -> Sequence[Vma]: ...
    def frozen(self, pid: int) -> AbstractContextManager[object]: ...
    def scan(self, pid: int, start: int, end: int) -> Sequence[pm.PageRegion]: ...
    def clear_refs(self, pid: int) -> None: ...
    def split_huge(self, pid: int, blocks: Sequence[int]) -> None: ...
    def read(self, pid: int, addr: int, length: int) -> bytes | None: ...


class ProcSoftDirty:
    """The real kernel: freeze with ptrace, batched pagemap reads for bit 55, clear_refs."""

    def __init__(self) -> None:
        from ..features import zero_pfns

        self._zero = zero_pfns()
        self._buf = bytearray()
        self._reader: SharingReader | None = None  # the frozen target's memory

    def read_maps(self, pid: int) -> Sequence[Vma]:
        return read_maps(pid)

    @contextmanager
    def frozen(self, pid: int) -> Iterator[object]:
        """Freeze the target, unless this process holds it stopped already (the final dump's freeze);
        its memory stays open meanwhile for :meth:`read`."""
        from ..control.seize import freeze

        with (nullcontext() if read_status(pid).tracerpid == os.getpid() else freeze(pid)) as held, \
                SharingReader(pid) as self._reader:
            try:
                yield held
            finally:
                self._reader = None

    def scan(self, pid: int, start: int, end: int) -> Sequence[pm.PageRegion]:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        out: list[pm.PageRegion] = []
        try:
            pos = start
            while pos < end:
                n = min(pm.READ_CHUNK_PAGES, (end - pos) // PAGE_SIZE)
                if len(self._buf) < n * 8:
                    self._buf = bytearray(n * 8)  # kept: the next collection reuses it
                cls = pm.page_categories(fd, pos, n, want=_WANT, zero=self._zero, buf=self._buf).translate(_CLASS)
                for m in _W_OR_H.finditer(cls):
                    cats = pm.PAGE_IS_PRESENT | pm.PAGE_IS_SOFT_DIRTY if cls[m.start()] == ord("w") else 0
                    out.append(pm.PageRegion(pos + m.start() * PAGE_SIZE, pos + m.end() * PAGE_SIZE, cats))
                pos += n * PAGE_SIZE
        finally:
            os.close(fd)
        return out

    def clear_refs(self, pid: int) -> None:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write(CLEAR_REFS_SOFT_DIRTY)

    def read(self, pid: int, addr: int, length: int) -> bytes | None:
        """The target's bytes at ``addr`` (None when any of them cannot be read).

        Pages shared with a fork are read without a pin (:class:`~ckpt.kernel.cowread.SharingReader`):
        the first collection hashes every block of a new VMA, and a pinned read would copy each page.
        """
        buf = bytearray(length)
        try:
            with nullcontext(self._reader) if self._reader and self._reader.pid == pid else SharingReader(pid) as r:
                return bytes(buf) if r.readinto(addr, memoryview(buf)) == length else None
        except OSError:
            return None

    def split_huge(self, pid: int, blocks: Sequence[int]) -> None:
        """Map the huge pages at these PMD-aligned addresses with small pages (a page each of MADV_COLD).

        Best effort: a refusal leaves a block whole, which tracking survives (coarser).
        """
        if not blocks:
            return
        try:
            pidfd = pidfd_open(pid)
        except OSError:
            return
        try:
            process_madvise(pidfd, [(b, PAGE_SIZE) for b in blocks], MADV_COLD)
        except OSError:
            pass  # ENOSYS (before 5.10), EPERM (no CAP_SYS_NICE): coarse blocks, still right
        finally:
            os.close(pidfd)


def huge_blocks(found: Sequence[VmaDirty], vmas: Sequence[Vma]) -> list[int]:
    """The PMD-aligned 2 MiB blocks of private VMAs that read as wholly written: where a THP may be mapped."""
    out: list[int] = []
    for d, v in zip(found, vmas):
        if v.shared:
            continue
        for start, n in d.written:
            b = -(-start // HPAGE_PMD_SIZE) * HPAGE_PMD_SIZE
            out.extend(range(b, start + n * PAGE_SIZE - HPAGE_PMD_SIZE + 1, HPAGE_PMD_SIZE))
    return out


class SoftDirtyTracker(Tracker):
    """Tracks ``pid`` with soft-dirty bits; ``kernel`` defaults to the real one."""

    method = "soft-dirty"

    def __init__(self, pid: int, kernel: SoftDirtyKernel | None = None) -> None:
        super().__init__(pid)
        self.kernel: SoftDirtyKernel = kernel or ProcSoftDirty()
        self.start_time = read_starttime(pid) if kernel is None else 0
        self._running = False
        #: The tracked VMAs at the last clear; one not among them now is wholly dirty.
        self._layout: frozenset[VmaKey] = frozenset()
        #: PMD-aligned block → its pages' digests at the last clear (blocks once seen wholly written).
        self._digests: dict[int, bytearray] = {}

    def start(self, ranges: RangeSpec | None = None) -> None:
        self.ranges = ranges or RangeSpec()
        self._running = True
        self.collect()

    @classmethod
    def attach(cls, state: TrackingState, kernel: SoftDirtyKernel | None = None) -> "SoftDirtyTracker":
        """The bits live in the target's page tables: nothing to re-open; the layout comes with the state
        (none recorded: every VMA is wholly dirty at the first collection)."""
        self = cls(state.pid, kernel)
        self.ranges = state.ranges
        self._layout = frozenset(tuple(k) for k in state.layout)  # type: ignore[misc]
        if state.digests_path:
            self.load_digests(state.digests_path)
        self._running = True
        return self

    def collect(self) -> DirtySet:
        """Get and clear, with the target frozen for both (see the module docstring)."""
        return self._walk(clear=True)

    def peek(self) -> DirtySet:
        """The pages written since the last clear, without clearing."""
        return self._walk(clear=False)

    def _walk(self, *, clear: bool) -> DirtySet:
        if not self._running:
            raise CkptError(f"tracking of process {self.pid} is not running")
        try:
            with self.kernel.frozen(self.pid):
                selected = select_ranges(self.kernel.read_maps(self.pid), self.ranges.include, self.ranges.exclude)
                t0 = time.perf_counter()
                found = [self._one(s, e, v) for (s, e), v in selected]
                wholly = huge_blocks(found, [v for _, v in selected])
                if clear:
                    found = self._narrow(found, [v for _, v in selected], frozenset(wholly))
                    self.kernel.clear_refs(self.pid)  # whole process, after every get: still frozen
                    # then, before any write can mark a whole PMD again, the wholly written blocks go small
                    self.kernel.split_huge(self.pid, wholly)
                elapsed = time.perf_counter() - t0
        except OSError as e:
            raise translate_oserror(e, self.pid, "collecting soft-dirty bits of") from e
        if clear:
            self._layout = frozenset(vma_key(v) for _, v in selected)
            gone = self._previous.gone([r for r, _ in selected])
        else:
            gone = ()
        return DirtySet(self.method, tuple(found), gone, elapsed, time.monotonic())

    def _hash(self, addr: int, npages: int) -> bytes:
        data = self.kernel.read(self.pid, addr, npages * PAGE_SIZE)
        return NO_DIGEST * npages if data is None else bytes(page_digests(memoryview(data), npages))

    def _narrow(self, found: list[VmaDirty], vmas: Sequence[Vma], wholly: frozenset[int]) -> list[VmaDirty]:
        """Keep the block digests current (the target frozen, before the clear); a wholly written block
        that has them keeps as written only the pages whose digest changed."""
        out: list[VmaDirty] = []
        kept: dict[int, bytearray] = {}
        for d, v in zip(found, vmas):
            blocks = [] if v.shared else list(range(-(-d.start // HPAGE_PMD_SIZE) * HPAGE_PMD_SIZE,
                                                    d.end - HPAGE_PMD_SIZE + 1, HPAGE_PMD_SIZE))
            if not blocks:
                out.append(d)
                continue
            narrowed: list[Run] = []
            cut = [(b, b + HPAGE_PMD_SIZE) for b in blocks if b in wholly]
            for s, n in d.written:
                narrowed += [(a, (e - a) // PAGE_SIZE) for a, e in subtract_intervals((s, s + n * PAGE_SIZE), cut)
                             if e > a]
            for b in blocks:
                old = None if d.new else self._digests.get(b)
                if b in wholly:
                    new = bytearray(self._hash(b, _BLOCK_PAGES))
                    for i in range(_BLOCK_PAGES):
                        o = slice(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE)
                        if old is None or old[o] != new[o] or new[o] == NO_DIGEST:
                            narrowed.append((b + i * PAGE_SIZE, 1))
                    kept[b] = new
                elif old is not None:  # the bits are exact here: refresh the pages they report
                    for runs, hashed in ((d.written, True), (d.holes, False)):
                        for s, n in runs:
                            lo, hi = max(s, b), min(s + n * PAGE_SIZE, b + HPAGE_PMD_SIZE)
                            if lo < hi:
                                k = (hi - lo) // PAGE_SIZE
                                i = (lo - b) // PAGE_SIZE * DIGEST_SIZE
                                old[i:i + k * DIGEST_SIZE] = self._hash(lo, k) if hashed else NO_DIGEST * k
                    kept[b] = old
            out.append(dataclasses.replace(d, written=merge_runs(sorted(narrowed))))
        self._digests = kept
        return out

    def records(self) -> list[object]:
        """The block digests as image records (a digests file), for the next ckpt run of the chain."""
        return digest_records(str(self.pid), [DigestRange(b, b + HPAGE_PMD_SIZE, d) for b, d in sorted(self._digests.items())])

    def load_digests(self, path: str) -> None:
        """Take the block digests an image recorded (:meth:`records`); without them, blocks start coarse."""
        try:
            owner, ranges = load_digests(path)
        except FileNotFoundError:
            return
        except CkptError as e:
            raise TrackingLost(self.pid, f"the digests file is unusable: {e}") from None
        if owner == str(self.pid):
            self._digests = {r.start: r.digests for r in ranges if r.end - r.start == HPAGE_PMD_SIZE}

    def _one(self, start: int, end: int, vma: Vma) -> VmaDirty:
        new = vma_key(vma) not in self._layout
        written: list[Run] = []
        holes: list[Run] = []
        for r in self.kernel.scan(self.pid, start, end):
            if not r.categories & _PRESENT:
                holes.append((r.start, r.npages))
            elif new or r.categories & (pm.PAGE_IS_SOFT_DIRTY | pm.PAGE_IS_PFNZERO):
                written.append((r.start, r.npages))
        if new:  # wholly dirty: everything that is not a hole
            written = [(s, (e - s) // PAGE_SIZE) for s, e in
                       subtract_intervals((start, end), [(h, h + n * PAGE_SIZE) for h, n in holes]) if e > s]
        return VmaDirty(start, end, vma.path, merge_runs(written), merge_runs(holes), new=new)

    def state(self) -> TrackingState:
        return TrackingState(self.method, self.pid, self.start_time, include=self.ranges.include,
                             exclude=self.ranges.exclude, layout=tuple(sorted(self._layout)))

    def detach(self) -> TrackingState:
        self._running = False
        return self.state()

    def stop(self) -> None:
        """Nothing to undo: the bits stay in the page tables, and nobody reads them."""
        self._running = False
