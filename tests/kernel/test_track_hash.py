"""hash tracker against the writer: no missed write, digests persisted in a digests-<owner>.img file."""

from __future__ import annotations

import os
import time

import pytest

from ckpt.errors import CorruptImage
from ckpt.image import framing, kinds
from ckpt.track import TrackingLost, open_tracker
from ckpt.track.hash import load_digests

from .test_track_uffd import run_iterations, start_writer
from .writer_check import Tally, check_iteration, snapshot


def test_never_misses_a_write(c_target) -> None:
    t, area = start_writer(c_target, npages=1024, threads=2, rate=10000)
    tracker = open_tracker(t.pid, "hash")
    try:
        tally = run_iterations(tracker, t, area, 6)
    finally:
        tracker.stop()
    print(f"hash: {tally}")
    assert tally.misses == [] and tally.shadow_misses == 0
    assert tally.changed > 200 and tally.reported >= tally.changed
    assert tally.new_vmas > 0


def test_digests_survive_in_an_image_file(c_target, tmp_path) -> None:
    t, area = start_writer(c_target, npages=512, threads=1, rate=2000, churn=0)
    path = tmp_path / "digests-1.img"
    state = open_tracker(t.pid, "hash", digests_path=path).detach()
    data = path.read_bytes()
    assert framing.parse_header(path, data, kinds.DIGESTS.magic)[0] == b"HASH"
    owner, ranges = load_digests(path)
    assert owner == str(t.pid) and any(r.start <= area[0] and area[1] <= r.end for r in ranges)
    before = snapshot(t.pid, area)
    time.sleep(0.05)
    tracker = open_tracker(t.pid, state=state)
    tally = Tally()
    check_iteration(tracker, t.pid, area, before, tally, dict(before))
    assert tally.misses == [] and tally.changed > 10
    tracker.stop()
    path.write_bytes(data[:-5])  # truncated: unusable, so the next pre-dump is full
    with pytest.raises(TrackingLost):
        open_tracker(t.pid, state=state)
    path.unlink()
    with pytest.raises(TrackingLost, match="gone"):
        open_tracker(t.pid, state=state)
    assert CorruptImage  # the error the loader raises inside, turned into TrackingLost


@pytest.mark.parametrize("unmapped", [(0,), (0, 2)], ids=["first-page", "first-and-middle"])
def test_unreadable_pages_never_hide_a_write(monkeypatch, unmapped) -> None:
    """Maps read a moment before the pages: a range whose first page is gone must not hide the rest.

    Seen under load against the churning writer: /proc/PID/maps listed a region,
    its first page was unmapped before process_vm_readv reached it (EFAULT), so
    the whole chunk was recorded as unreadable; the next round the same again,
    and ``old == now`` (unreadable == unreadable) reported nothing although a
    page behind it had been rewritten.  Reproduced here by handing the tracker a
    stale maps list, on this very process.
    """
    import ctypes
    import mmap as _mmap

    from ckpt.kernel.arch_x86_64 import PAGE_SIZE
    from ckpt.procfs.maps import read_maps
    from ckpt.track import RangeSpec
    from ckpt.track import hash as hash_mod

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    n = 4
    base = libc.mmap(None, n * PAGE_SIZE, _mmap.PROT_READ | _mmap.PROT_WRITE,
                     _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        for i in range(n):
            ctypes.memset(base + i * PAGE_SIZE, 0x40 + i, PAGE_SIZE)
        stale = read_maps(os.getpid())  # lists [base, base + 4 pages) as one VMA
        assert any(v.start <= base and base + n * PAGE_SIZE <= v.end for v in stale)
        for i in unmapped:
            assert libc.munmap(base + i * PAGE_SIZE, PAGE_SIZE) == 0
        monkeypatch.setattr(hash_mod, "read_maps", lambda pid, **kw: stale)
        tracker = hash_mod.HashTracker(os.getpid())
        tracker.start(RangeSpec(include=((base, base + n * PAGE_SIZE),)))
        readable = [i for i in range(n) if i not in unmapped]
        written = readable[0]  # the first page behind an unmapped one
        ctypes.memset(base + written * PAGE_SIZE, 0x7f, 16)
        dirty = set(tracker.collect().pages())
        pages = {base + i * PAGE_SIZE for i in range(n)}
        assert base + written * PAGE_SIZE in dirty                      # the write is seen
        assert {base + i * PAGE_SIZE for i in unmapped} <= dirty        # unreadable: always dirty
        assert dirty <= pages and base + readable[-1] * PAGE_SIZE not in dirty  # readable and unchanged: clean
        assert set(tracker.collect().pages()) == {base + i * PAGE_SIZE for i in unmapped}
        tracker.stop()
    finally:
        libc.munmap(base, n * PAGE_SIZE)


def test_grown_vma_reports_only_the_pages_it_had_no_digest_for() -> None:
    """A tracked VMA that grew (brk, mremap in place, a thread stack or new mmap merging with it)
    is not "new" as a whole: only the pages no earlier round hashed are dirty, plus real writes.

    Seen in test_predump_chain_restore[hash]: a churn region merging with the 4096-page main
    area made the hash tracker report the whole area new, so the pre-dump copied every page.
    """
    import ctypes
    import mmap as _mmap

    from ckpt.kernel.arch_x86_64 import PAGE_SIZE
    from ckpt.procfs.maps import read_maps
    from ckpt.track import RangeSpec
    from ckpt.track import hash as hash_mod

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    n, grow = 8, 4
    prot, flags = _mmap.PROT_READ | _mmap.PROT_WRITE, _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS
    base = libc.mmap(None, (n + grow) * PAGE_SIZE, prot, flags, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        top = base + n * PAGE_SIZE
        assert libc.munmap(top, grow * PAGE_SIZE) == 0
        for i in range(n):
            ctypes.memset(base + i * PAGE_SIZE, 0x40 + i, PAGE_SIZE)
        tracker = hash_mod.HashTracker(os.getpid())
        tracker.start(RangeSpec(include=((base, base + (n + grow) * PAGE_SIZE),)))
        # the VMA grows: a new mapping right above it merges into one VMA
        assert libc.mmap(top, grow * PAGE_SIZE, prot, flags | 0x10, -1, 0) == top  # MAP_FIXED
        for i in range(grow):
            ctypes.memset(top + i * PAGE_SIZE, 0x60 + i, PAGE_SIZE)
        ctypes.memset(base + 2 * PAGE_SIZE, 0x7f, 16)
        assert any(v.start <= base and base + (n + grow) * PAGE_SIZE <= v.end for v in read_maps(os.getpid()))
        ds = tracker.collect()
        want = {base + 2 * PAGE_SIZE} | {top + i * PAGE_SIZE for i in range(grow)}
        assert set(ds.pages()) == want
        assert not any(v.new for v in ds.vmas)
        assert set(tracker.collect().pages()) == set()
        tracker.stop()
    finally:
        libc.munmap(base, (n + grow) * PAGE_SIZE)
