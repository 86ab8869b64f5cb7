"""PAGEMAP_SCAN and classic pagemap entries on a live target."""

from __future__ import annotations

import ctypes
import os

import pytest

from ckpt.kernel import pagemap
from ckpt.kernel.arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX
from ckpt.kernel.pagemap import PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_WRITTEN, PageRegion, pagemap_scan


def test_layout() -> None:
    assert ctypes.sizeof(pagemap.pm_scan_arg) == 12 * 8
    assert ctypes.sizeof(pagemap.page_region) == 3 * 8
    assert pagemap.PAGEMAP_SCAN == 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)


@pytest.fixture
def spin(c_target):
    t = c_target("spin")
    info = t.ready()
    fd = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    yield t, int(info["pattern"], 16), int(info["npages"]), int(info["protnone"], 16), fd
    os.close(fd)


def test_scan_finds_the_pattern_area_present(spin) -> None:
    _, base, npages, _, fd = spin
    regions = list(pagemap_scan(fd, base, base + npages * PAGE_SIZE, category_mask=PAGE_IS_PRESENT,
                                return_mask=PAGE_IS_PRESENT | PAGE_IS_FILE))
    assert regions == [PageRegion(base, base + npages * PAGE_SIZE, PAGE_IS_PRESENT)]
    assert regions[0].npages == npages


def test_small_buffer_loops_on_walk_end_and_merges(spin) -> None:
    _, _, _, _, fd = spin
    kw = dict(category_mask=PAGE_IS_PRESENT, return_mask=PAGE_IS_PRESENT | PAGE_IS_FILE)
    whole = list(pagemap_scan(fd, 0, TASK_SIZE_MAX, **kw))
    tiny = list(pagemap_scan(fd, 0, 1 << 47, vec_len=1, **kw))  # end past TASK_SIZE_MAX is clamped
    assert len(whole) > 3
    assert tiny == whole


def test_max_pages_bounds_the_whole_scan(spin) -> None:
    _, base, npages, _, fd = spin
    regions = list(pagemap_scan(fd, base, base + npages * PAGE_SIZE, category_mask=PAGE_IS_PRESENT,
                                return_mask=PAGE_IS_PRESENT, max_pages=3, vec_len=1))
    assert sum(r.npages for r in regions) == 3


def test_scan_error_names_the_ioctl(spin) -> None:
    _, base, _, _, fd = spin
    with pytest.raises(OSError) as exc:
        list(pagemap_scan(fd, base + 1, base + PAGE_SIZE, return_mask=PAGE_IS_WRITTEN))  # unaligned start
    assert "PAGEMAP_SCAN" in str(exc.value)


def test_classic_entries(spin) -> None:
    _, base, npages, protnone, fd = spin
    entries = pagemap.read_pagemap_entries(fd, base, npages)
    assert len(entries) == npages
    for e in entries:
        d = pagemap.PagemapEntry.decode(e)
        assert d.present and not d.swapped and not d.file and d.exclusive and d.pfn != 0
    # The PROT_NONE page was written before mprotect: still present, still anonymous.
    (e,) = pagemap.read_pagemap_entries(fd, protnone, 1)
    assert pagemap.pm_present(e) and not pagemap.pm_file(e)
    # A page of the executable is a file page.
    with open(f"/proc/{spin[0].pid}/maps") as f:
        text = next(line for line in f if "r-xp" in line and "spin" in line)
    (e,) = pagemap.read_pagemap_entries(fd, int(text.split("-")[0], 16), 1)
    assert pagemap.pm_file(e)


_LISTED = pagemap.PAGE_IS_PRESENT | pagemap.PAGE_IS_SWAPPED
_RETURNED = _LISTED | PAGE_IS_FILE | pagemap.PAGE_IS_PFNZERO


def _both(fd: int, start: int, end: int) -> tuple[list[PageRegion], list[PageRegion]]:
    from ckpt.features import zero_pfns

    kw = dict(category_anyof_mask=_LISTED, return_mask=_RETURNED)
    return list(pagemap_scan(fd, start, end, **kw)), list(pagemap.read_regions(fd, start, end, zero=zero_pfns(), **kw))


@pytest.mark.skipif(os.geteuid() != 0, reason="pfns (the zero page's) are shown to CAP_SYS_ADMIN only")
def test_pagemap_reads_list_what_pagemap_scan_lists(spin) -> None:
    """The listing of kernels before 6.7 (batched reads) says what PAGEMAP_SCAN says: on every VMA of a
    live target, and on memory with written, read-only (zero page) and dropped pages, across a
    chunk boundary of the reads."""
    import mmap

    from ckpt.features import pagemap_scan_works
    from ckpt.kernel.vm import buffer_address

    if not pagemap_scan_works():
        pytest.skip("no PAGEMAP_SCAN to compare with on this kernel")
    t, _, _, _, fd = spin
    with open(f"/proc/{t.pid}/maps") as f:
        spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in f]
    for s, e in spans:
        if e <= TASK_SIZE_MAX:
            scan, read = _both(fd, s, e)
            assert read == scan, (hex(s), hex(e))
    n = pagemap.READ_CHUNK_PAGES + 300
    m = mmap.mmap(-1, n * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    base = buffer_address(m)
    for i in range(0, n, 3):
        m[i * PAGE_SIZE] = 1
    for i in range(1, n, 7):
        _ = m[i * PAGE_SIZE]
    m.madvise(mmap.MADV_DONTNEED, 30 * PAGE_SIZE, 9 * PAGE_SIZE)
    own = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        scan, read = _both(own, base, base + n * PAGE_SIZE)
    finally:
        os.close(own)
        m.close()
    assert any(r.categories & pagemap.PAGE_IS_PFNZERO for r in scan)
    assert read == scan
