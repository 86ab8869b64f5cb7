"""/proc/PID/pagemap: the PAGEMAP_SCAN ioctl (Linux 6.7) and the classic 8-byte entries.

``PAGEMAP_SCAN`` walks a range of the target's page tables and reports runs of
pages by category; with ``PM_SCAN_WP_MATCHING`` it write-protects the pages it
reports in the same walk, the atomic get-and-clear the uffd-wp tracker is built
on (DESIGN §2).  Debian 12's headers lack it; the layout and values are from the
kernel's include/uapi/linux/fs.h.

The classic entries (Documentation/admin-guide/mm/pagemap.rst) are one u64 per
page at offset ``vaddr / PAGE_SIZE * 8``.  Kernels before 6.7 have only them:
:func:`read_regions` answers the questions PAGEMAP_SCAN answers (present,
swapped, file, zero page, soft-dirty) from large batched reads, one pread per
GiB of address space, classified a byte column at a time (no per-page Python).
"""

from __future__ import annotations

import array
import ctypes
import errno
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX
from .ioctl import _IOWR, ioctl
from .vm import pread_exact

__all__ = [
    "pm_scan_arg", "page_region", "PAGEMAP_SCAN",
    "PAGE_IS_WPALLOWED", "PAGE_IS_WRITTEN", "PAGE_IS_FILE", "PAGE_IS_PRESENT", "PAGE_IS_SWAPPED",
    "PAGE_IS_PFNZERO", "PAGE_IS_HUGE", "PAGE_IS_SOFT_DIRTY", "PAGE_IS_GUARD", "PM_SCAN_WP_MATCHING",
    "PM_SCAN_CHECK_WPASYNC", "PageRegion", "pagemap_scan",
    "PM_PFRAME_MASK", "PM_SOFT_DIRTY", "PM_MMAP_EXCLUSIVE", "PM_UFFD_WP", "PM_GUARD_REGION",
    "PM_FILE", "PM_SWAP", "PM_PRESENT", "PagemapEntry", "read_pagemap_entries",
    "pm_present", "pm_swapped", "pm_file", "pm_exclusive", "pm_soft_dirty", "pm_uffd_wp", "pm_pfn",
    "ZeroPfns", "READ_CHUNK_PAGES", "READ_CATEGORIES", "page_categories", "category_runs", "read_regions",
    "shared_anon",
]

# --- PAGEMAP_SCAN categories (a page_region's ``categories`` bits) ---
PAGE_IS_WPALLOWED = 1 << 0   # the VMA is registered for async uffd-wp
PAGE_IS_WRITTEN = 1 << 1     # written since last write-protected (or never protected)
PAGE_IS_FILE = 1 << 2        # file-backed or shared anonymous page
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5     # the shared zero page (read but never written)
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8       # Linux 6.15: MADV_GUARD_INSTALL marker

# --- PAGEMAP_SCAN flags ---
#: Write-protect the pages that match (get-and-clear).
PM_SCAN_WP_MATCHING = 1 << 0
#: Fail with EPERM unless the whole range is registered with UFFD_FEATURE_WP_ASYNC.
PM_SCAN_CHECK_WPASYNC = 1 << 1


class page_region(ctypes.Structure):
    """``struct page_region``: one run of pages with identical categories."""

    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class pm_scan_arg(ctypes.Structure):
    """``struct pm_scan_arg`` (12 u64s); the kernel writes back ``walk_end``."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
            "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
        )
    ]


PAGEMAP_SCAN = _IOWR("f", 16, pm_scan_arg)


@dataclass(frozen=True)
class PageRegion:
    """Pages ``[start, end)`` sharing ``categories`` (PAGE_IS_* bits, limited to return_mask)."""

    start: int
    end: int
    categories: int

    @property
    def npages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


def pagemap_scan(
    fd: int,
    start: int,
    end: int,
    *,
    flags: int = 0,
    category_mask: int = 0,
    category_anyof_mask: int = 0,
    category_inverted: int = 0,
    return_mask: int,
    max_pages: int = 0,
    vec_len: int = 512,
) -> Iterator[PageRegion]:
    """Run PAGEMAP_SCAN over ``[start, end)`` of the pagemap opened as ``fd``.

    Loops on ``walk_end`` with one ``vec_len`` buffer reused for every call: a
    single call returning many regions can stop short, and an unbounded buffer
    would cost fresh memory (DESIGN §2).  ``end`` is clamped to
    ``TASK_SIZE_MAX`` (0x7ffffffff000; 1 << 47 gives EFAULT).  ``max_pages`` (0 =
    no limit) bounds the pages reported over the *whole* scan; with
    ``PM_SCAN_WP_MATCHING`` only the reported pages are write-protected again.
    A run that crosses a call boundary is merged back into one region.

    Note: with ``PM_SCAN_CHECK_WPASYNC`` the kernel fails with EPERM at the first
    unregistered VMA *after* clearing what it walked before it: scan one VMA at a time.
    """
    end = min(end, TASK_SIZE_MAX)
    if start >= end:
        return
    vec = (page_region * vec_len)()
    arg = pm_scan_arg()
    arg.size = ctypes.sizeof(pm_scan_arg)
    arg.flags = flags
    arg.end = end
    arg.vec = ctypes.addressof(vec)
    arg.vec_len = vec_len
    arg.category_inverted = category_inverted
    arg.category_mask = category_mask
    arg.category_anyof_mask = category_anyof_mask
    arg.return_mask = return_mask
    remaining = max_pages
    pending: PageRegion | None = None
    cursor = start
    while cursor < end:
        arg.start = cursor
        arg.walk_end = 0
        arg.max_pages = remaining
        n = ioctl(fd, PAGEMAP_SCAN, arg, f"ioctl(PAGEMAP_SCAN, {cursor:#x}-{end:#x}, flags={flags:#x})")
        for i in range(n):
            r = vec[i]
            if pending is not None and pending.end == r.start and pending.categories == r.categories:
                pending = PageRegion(pending.start, r.end, r.categories)
                continue
            if pending is not None:
                yield pending
            pending = PageRegion(r.start, r.end, r.categories)
        if max_pages:
            remaining -= sum((vec[i].end - vec[i].start) // PAGE_SIZE for i in range(n))
            if remaining <= 0:
                break
        if arg.walk_end <= cursor:  # no progress: would loop forever
            raise OSError(errno.EIO, f"ioctl(PAGEMAP_SCAN, {cursor:#x}-{end:#x}): walk_end did not advance")
        cursor = arg.walk_end
    if pending is not None:
        yield pending


# --- classic pagemap entries ---

PM_PFRAME_MASK = (1 << 55) - 1  # bits 0-54: pfn (present) or swap type/offset (swapped); 0 without CAP_SYS_ADMIN
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56     # page mapped exclusively (Linux 4.2)
PM_UFFD_WP = 1 << 57            # pte is uffd-wp write-protected (Linux 5.13)
PM_GUARD_REGION = 1 << 58       # guard region marker (Linux 6.15)
PM_FILE = 1 << 61               # file page or shared anonymous
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63


def pm_present(entry: int) -> bool:
    return bool(entry & PM_PRESENT)


def pm_swapped(entry: int) -> bool:
    return bool(entry & PM_SWAP)


def pm_file(entry: int) -> bool:
    """File-backed or shared-anonymous page; clear on a private mapping's written (COW) pages."""
    return bool(entry & PM_FILE)


def pm_exclusive(entry: int) -> bool:
    return bool(entry & PM_MMAP_EXCLUSIVE)


def pm_soft_dirty(entry: int) -> bool:
    return bool(entry & PM_SOFT_DIRTY)


def pm_uffd_wp(entry: int) -> bool:
    return bool(entry & PM_UFFD_WP)


def pm_pfn(entry: int) -> int:
    """Page frame number of a present page (0 when hidden from unprivileged readers)."""
    return entry & PM_PFRAME_MASK if entry & PM_PRESENT else 0


@dataclass(frozen=True)
class PagemapEntry:
    """One decoded pagemap entry."""

    present: bool
    swapped: bool
    file: bool
    exclusive: bool
    soft_dirty: bool
    uffd_wp: bool
    pfn: int

    @classmethod
    def decode(cls, entry: int) -> "PagemapEntry":
        return cls(pm_present(entry), pm_swapped(entry), pm_file(entry), pm_exclusive(entry),
                   pm_soft_dirty(entry), pm_uffd_wp(entry), pm_pfn(entry))


def read_pagemap_entries(fd: int, start_vaddr: int, npages: int) -> array.array:
    """The raw u64 entries of ``npages`` pages from ``start_vaddr`` (page-aligned down)."""
    out = array.array("Q", bytes(npages * 8))
    # The pagemap offset of a page is its index * 8; errors name the address asked for.
    pread_exact(fd, memoryview(out).cast("B"), start_vaddr // PAGE_SIZE * 8, f"pagemap @{start_vaddr:#x}")
    return out


# --- PAGEMAP_SCAN's answers from classic entries (kernels before 6.7) ---

#: Pages per pread of /proc/PID/pagemap: 2 MiB of entries, 1 GiB of address space.
READ_CHUNK_PAGES = 1 << 18
#: The categories :func:`page_categories` can tell from classic entries (all fit in one byte).
READ_CATEGORIES = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO | PAGE_IS_SOFT_DIRTY
#: Byte 7 of an entry (bits 56-63) → PRESENT / SWAPPED / FILE; byte 6's top bit is bit 55, soft-dirty
#: (set on swap entries too: pte_swp_soft_dirty).
_TOP = bytes((PAGE_IS_PRESENT if b & 0x80 else 0) | (PAGE_IS_SWAPPED if b & 0x40 else 0)
             | (PAGE_IS_FILE if b & 0x20 else 0) for b in range(256))
_SOFT_DIRTY = bytes(PAGE_IS_SOFT_DIRTY if b & 0x80 else 0 for b in range(256))
_IS_ZERO = bytes(PAGE_IS_PFNZERO if b == 0 else 0 for b in range(256))


@dataclass(frozen=True)
class ZeroPfns:
    """Where the kernel's zero pages are, to tell PFNZERO from classic entries (0: not known).

    ``small``: the pfn of the shared zero page (a read fault on never-written
    anonymous memory maps it).  ``huge``: the first of the 512 pfns of the huge
    zero page (a read fault on a THP-enabled, PMD-aligned area; Linux reports
    it as a file page).  Pfns are shown only to CAP_SYS_ADMIN: without it
    both stay 0 and no page is reported as a zero page.
    """

    small: int = 0
    huge: int = 0
    huge_pages: int = 512

    def _columns(self, pfn: int, free_low_bits: int) -> list[tuple[int, bytes]]:
        """(byte index, table: 0 where that byte of the entry fits, 1 elsewhere) for bytes 0-7."""
        out = []
        for j in range(7):
            want = (pfn >> (8 * j)) & 0xFF
            free = (free_low_bits >> (8 * j)) & 0xFF
            if j == 6:
                free |= 0x80  # bit 55, soft-dirty
            if free == 0xFF:
                continue
            out.append((j, bytes(0 if (b & ~free) == want & ~free else 1 for b in range(256))))
        # Byte 7: present, not swapped; exclusive, uffd-wp, guard and file bits may be anything.
        out.append((7, bytes(0 if b & 0xC0 == 0x80 else 1 for b in range(256))))
        return out

    def mark(self, buf: bytearray, npages: int) -> bytes | None:
        """One byte per page of the entries in ``buf``: PAGE_IS_PFNZERO where one maps a zero page, else 0
        (None: none does)."""
        n = npages * 8
        acc = -1
        for pfn, free in ((self.small, 0), (self.huge, self.huge_pages - 1)):
            if not pfn:
                continue
            # Skip the columns when the entry's fixed bytes 1-5 occur nowhere (byte 1's low bits may vary).
            fixed = pfn.to_bytes(8, "little")
            if not any(buf.find(bytes([b1]) + fixed[2:6], 0, n) >= 0
                       for b1 in {fixed[1] & ~(free >> 8), fixed[1] | (free >> 8)}):
                continue
            miss = 0
            for j, table in self._columns(pfn, free):
                miss |= int.from_bytes(buf[j:n:8].translate(table), "little")
            acc = miss if acc < 0 else acc & miss
        if acc < 0:
            return None
        flags = acc.to_bytes(npages, "little").translate(_IS_ZERO)
        return flags if flags.count(0) != npages else None


def page_categories(fd: int, start: int, npages: int, *, want: int = READ_CATEGORIES,
                    zero: ZeroPfns | None = None, buf: bytearray | None = None) -> bytes:
    """One byte of PAGE_IS_* bits (those of ``want`` among READ_CATEGORIES) per page from ``start``.

    One pread of ``npages`` entries (keep it to READ_CHUNK_PAGES; ``buf`` of at
    least ``npages * 8`` bytes is reused when given), then whole-column byte
    operations: byte 7 of every entry through one table, bit 55 through
    another, the zero pages by comparing each byte column with the zero
    pfn's (:meth:`ZeroPfns.mark`).
    """
    n = npages * 8
    if buf is None or len(buf) < n:
        buf = bytearray(n)
    pread_exact(fd, memoryview(buf)[:n], start // PAGE_SIZE * 8, f"pagemap @{start:#x}")
    cats = buf[7:n:8].translate(_TOP)  # strided slices and translate: C loops over whole columns
    if want & PAGE_IS_SOFT_DIRTY:
        sd = buf[6:n:8].translate(_SOFT_DIRTY)
        cats = (int.from_bytes(cats, "little") | int.from_bytes(sd, "little")).to_bytes(npages, "little")
    if want & PAGE_IS_PFNZERO and zero is not None:
        z = zero.mark(buf, npages)
        if z is not None:
            cats = (int.from_bytes(cats, "little") | int.from_bytes(z, "little")).to_bytes(npages, "little")
    return bytes(cats)


#: For each byte value, a pattern finding the next byte that differs (a C-speed scan over a run).
_OTHER = [re.compile(b"[^" + re.escape(bytes([c])) + b"]") for c in range(256)]


def category_runs(cats: bytes, start: int, skip: int = 0xFF) -> Iterator[tuple[int, int, int]]:
    """``(start, end, byte)`` of each run of equal bytes of ``cats`` (one per page from ``start``), but
    runs of ``skip``; one regex search per run, so a long run costs no Python per page."""
    i, n = 0, len(cats)
    while i < n:
        c = cats[i]
        m = _OTHER[c].search(cats, i)
        j = m.start() if m else n
        if c != skip:
            yield start + i * PAGE_SIZE, start + j * PAGE_SIZE, c
        i = j


def read_regions(fd: int, start: int, end: int, *, category_mask: int = 0, category_anyof_mask: int = 0,
                 category_inverted: int = 0, return_mask: int, zero: ZeroPfns | None = None,
                 buf: bytearray | None = None) -> Iterator[PageRegion]:
    """What :func:`pagemap_scan` (without flags) reports, from classic entries: for kernels without it.

    Same matching rules (a page matches when ``categories ^ inverted``
    has every bit of ``category_mask`` and, if ``category_anyof_mask``, one of
    those), limited to READ_CATEGORIES; runs are cut at every
    READ_CHUNK_PAGES boundary and joined again.  Read a range of *mapped*
    memory: a gap between VMAs is read (as absent pages) like the rest.
    """
    used = category_mask | category_anyof_mask | category_inverted | return_mask
    if used & ~READ_CATEGORIES:
        raise ValueError(f"categories {used & ~READ_CATEGORIES:#x} cannot be read from /proc/PID/pagemap entries")
    end = min(end, TASK_SIZE_MAX)
    table = bytes(
        (c & return_mask) if (c ^ category_inverted) & category_mask == category_mask
        and (not category_anyof_mask or (c ^ category_inverted) & category_anyof_mask) else 0xFF
        for c in range(256))  # 0xFF never occurs: WPALLOWED and WRITTEN are never read
    chunk = READ_CHUNK_PAGES
    if buf is None:
        buf = bytearray(min(chunk, max(0, end - start) // PAGE_SIZE) * 8)
    pending: PageRegion | None = None
    pos = start
    while pos < end:
        n = min(chunk, (end - pos) // PAGE_SIZE)
        cats = page_categories(fd, pos, n, want=used, zero=zero, buf=buf).translate(table)
        for s, e, c in category_runs(cats, pos):
            if pending is not None and pending.end == s and pending.categories == c:
                pending = PageRegion(pending.start, e, c)
                continue
            if pending is not None:
                yield pending
            pending = PageRegion(s, e, c)
        pos += n * PAGE_SIZE
    if pending is not None:
        yield pending


# Byte 7 of an entry holds bits 56-63: 63 present, 62 swapped, 61 file, 56 exclusively mapped.
_SHARED_ANON = bytes(1 if b & 0xE1 == 0x80 else 0 for b in range(256))  # present, anonymous, not exclusive


def shared_anon(fd: int, runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``runs`` whose pages are present, anonymous and not mapped by this process alone.

    Since Linux 5.19 pinning such a page (``process_vm_readv``, FOLL_PIN) makes the
    kernel copy it first (``gup_must_unshare``), which ends copy-on-write sharing
    with a fork; ``/proc/PID/mem`` reads it without a pin.  One pread of entries
    per READ_CHUNK_PAGES and a table lookup on byte 7: no Python per page.
    """
    out: list[tuple[int, int]] = []
    buf = bytearray()
    for lo, hi in runs:
        pos = lo
        while pos < hi:
            n = min(READ_CHUNK_PAGES, (hi - pos) // PAGE_SIZE)
            if len(buf) < n * 8:
                buf = bytearray(n * 8)
            pread_exact(fd, memoryview(buf)[:n * 8], pos // PAGE_SIZE * 8, f"pagemap @{pos:#x}")
            col = buf[7:n * 8:8].translate(_SHARED_ANON)
            if col.count(1):
                out.extend((s, e) for s, e, _ in category_runs(bytes(col), pos, skip=0))
            pos += n * PAGE_SIZE
    return out
