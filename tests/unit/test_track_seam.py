"""The seam shared by all tracking back-ends: range selection, DirtySet, and soft-dirty over a fake kernel.

Soft-dirty cannot run on these machines (no CONFIG_MEM_SOFT_DIRTY); its logic is
checked here against a fake kernel — the one place in the suite that mocks (with a
target refusing every userfaultfd, which no kernel here does).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from contextlib import contextmanager

import pytest

from ckpt.errors import AccessDenied, UsageError
from ckpt.kernel import pagemap as pm
from ckpt.kernel import uffd
from ckpt.kernel.arch_x86_64 import HPAGE_PMD_SIZE
from ckpt.procfs.maps import parse_maps
from ckpt.track.base import DirtySet, RangeSpec, TrackingState, VmaDirty, parse_ranges, select_ranges
from ckpt.track.soft_dirty import SoftDirtyTracker, huge_blocks
from ckpt.track.uffd_wp import UffdWpTracker

P = 4096
MAPS = b"""\
555555554000-555555556000 r--p 00000000 fe:01 123 /usr/bin/prog
555555556000-555555558000 rw-p 00002000 fe:01 123 /usr/bin/prog
555555558000-555555579000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000010000 rw-p 00000000 00:00 0
7f0000010000-7f0000020000 rw-s 00000000 00:01 9 /dev/zero (deleted)
7f0000020000-7f0000030000 rw-s 00000000 fe:01 77 /data/file
7f0000030000-7f0000040000 r--s 00000000 fe:01 78 /data/ro
7f0000040000-7f0000050000 ---p 00000000 00:00 0
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00100000-7ffc00104000 r--p 00000000 00:00 0 [vvar]
7ffc00104000-7ffc00106000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""


def test_select_ranges_default_include_exclude() -> None:
    maps = parse_maps(MAPS)
    got = [(hex(s), hex(e), v.path) for (s, e), v in select_ranges(maps)]
    assert got == [
        ("0x555555556000", "0x555555558000", "/usr/bin/prog"),
        ("0x555555558000", "0x555555579000", "[heap]"),
        ("0x7f0000000000", "0x7f0000010000", ""),
        ("0x7f0000010000", "0x7f0000020000", "/dev/zero"),
        ("0x7ffc00000000", "0x7ffc00021000", "[stack]"),
    ]
    # include spanning two VMAs gives one piece per VMA; exclude cuts a hole
    inc = parse_ranges("7f0000008000-7f0000018000")
    exc = parse_ranges("0x7f000000a000-7f000000b000")
    got = [(hex(s), hex(e)) for (s, e), _ in select_ranges(maps, inc, exc)]
    assert got == [("0x7f0000008000", "0x7f000000a000"), ("0x7f000000b000", "0x7f0000010000"),
                   ("0x7f0000010000", "0x7f0000018000")]


@pytest.mark.parametrize("bad", ["", "zz-10", "1000", "2000-1000", "1001-2000", "1000-2000,,x"])
def test_parse_ranges_rejects(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ranges(bad)


def test_dirty_set_counts_and_state_round_trip() -> None:
    v = VmaDirty(0x1000, 0x9000, "", written=((0x1000, 2),), holes=((0x5000, 1),))
    ds = DirtySet("x", (v, VmaDirty(0x10000, 0x12000, "", ((0x10000, 2),), new=True)))
    assert (ds.written_pages, ds.hole_pages, ds.dirty_pages, ds.tracked_pages) == (4, 1, 5, 10)
    assert list(ds.pages(holes=False))[:2] == [0x1000, 0x2000] and len(ds.new_vmas) == 1
    st = TrackingState("uffd-wp", 42, 7, 1023, 99, include=((0x1000, 0x2000),))
    assert TrackingState.from_json(st.to_json()) == st


def test_state_file_mode_and_the_sweep_of_a_killed_writers_temporary(tmp_path) -> None:  # noqa: ANN001
    """A state file is 0600; a ``.tmpPID`` a killed run left (its pid gone) goes at the next save, a live
    writer's stays."""
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / f"track-5.json.tmp{dead}").write_text("{half")
    (tmp_path / f"track-6.json.tmp{os.getppid()}").write_text("{")
    st = TrackingState("uffd-wp", 42, 7, 1023, 99)
    st.save(tmp_path / "track-42.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["track-42.json", f"track-6.json.tmp{os.getppid()}"]
    assert (tmp_path / "track-42.json").stat().st_mode & 0o777 == 0o600
    assert TrackingState.load(tmp_path / "track-42.json") == st


class FakeKernel:
    """Maps + per-page (soft_dirty, present) bits; clear_refs clears every bit (whole process).

    ``huge``: the 2 MiB blocks a THP maps: one bit for the block, so a page written in it
    reads as every page of it written, until split_huge maps it with small pages.
    """

    def __init__(self) -> None:
        self.maps = parse_maps(MAPS)
        self.bits: dict[int, tuple[bool, bool]] = {}
        self.huge: set[int] = set()
        self.content: dict[int, bytes] = {}  # page → its bytes (a zero page when absent)
        self.log: list[str] = []
        self.frozen_now = False

    def read_maps(self, pid: int):
        self.log.append("maps")
        return self.maps

    @contextmanager
    def frozen(self, pid: int):
        self.log.append("freeze")
        self.frozen_now = True
        yield
        self.frozen_now = False
        self.log.append("thaw")

    def scan(self, pid: int, start: int, end: int):
        assert self.frozen_now, "soft-dirty must get and clear with the target frozen"
        self.log.append("scan")
        out = []
        for a in range(start, end, P):
            sd, present = self.bits.get(a, (False, True))
            block = a - a % HPAGE_PMD_SIZE
            if block in self.huge:
                sd = any(self.bits.get(b, (False,))[0] for b in range(block, block + HPAGE_PMD_SIZE, P))
            cats = (pm.PAGE_IS_SOFT_DIRTY if sd else 0) | (pm.PAGE_IS_PRESENT if present else 0)
            out.append(pm.PageRegion(a, a + P, cats))
        return out

    def clear_refs(self, pid: int) -> None:
        assert self.frozen_now
        self.log.append("clear")
        self.bits = {a: (False, p) for a, (_, p) in self.bits.items()}

    def write(self, addr: int) -> None:
        """The target writes the page: its bit and new content."""
        self.bits[addr] = (True, True)
        self.content[addr] = os.urandom(P)

    def read(self, pid: int, addr: int, length: int) -> bytes:
        assert self.frozen_now, "digests are of the content at the clear"
        return b"".join(self.content.get(a, bytes(P)) for a in range(addr, addr + length, P))

    def split_huge(self, pid: int, blocks) -> None:
        assert self.frozen_now, "a write between the clear and the split would mark the whole block"
        self.log.append("split")
        self.huge -= set(blocks)


def test_soft_dirty_through_the_seam() -> None:
    k = FakeKernel()
    heap = 0x555555558000
    tr = SoftDirtyTracker(1234, kernel=k)
    tr.start(RangeSpec())
    assert k.log == ["freeze", "maps"] + ["scan"] * 5 + ["clear", "split", "thaw"]  # one clear, after every get
    k.bits[heap + 2 * P] = (True, True)
    k.bits[heap + 3 * P] = (True, True)
    k.bits[heap + 5 * P] = (False, False)  # zapped: a hole every time
    ds = tr.collect()
    assert [r for v in ds.vmas for r in v.written] == [(heap + 2 * P, 2)]
    assert [r for v in ds.vmas for r in v.holes] == [(heap + 5 * P, 1)]
    assert ds.new_vmas == () and ds.gone == ()
    # a new mapping is wholly dirty (minus holes); an unmapped one is gone
    k.maps = [v for v in k.maps if v.path != "/dev/zero"] + parse_maps(
        b"7f0000100000-7f0000104000 rw-p 00000000 00:00 0\n")
    ds = tr.collect()
    assert [(v.start, v.written) for v in ds.new_vmas] == [(0x7f0000100000, ((0x7f0000100000, 4),))]
    assert ds.gone == ((0x7f0000010000, 0x7f0000020000),)
    assert tr.collect().written_pages == 0


def _wholly_new(ds: DirtySet) -> list[int]:
    return sorted(v.start for v in ds.new_vmas)


def test_soft_dirty_layout_changes_make_a_vma_wholly_dirty() -> None:
    """VM_SOFTDIRTY does not survive merges, splits and moves: the layout at the clear decides."""
    k = FakeKernel()
    anon = 0x7f0000000000
    tr = SoftDirtyTracker(1234, kernel=k)
    tr.start(RangeSpec())
    assert tr.collect().new_vmas == ()
    # mprotect splits the anonymous VMA: both pieces are new, every page of them dirty (no bit is set)
    k.maps = [v for v in k.maps if v.start != anon] + parse_maps(
        b"7f0000000000-7f0000008000 rw-p 00000000 00:00 0\n7f0000008000-7f0000010000 r--p 00000000 00:00 0\n")
    ds = tr.collect()
    assert _wholly_new(ds) == [anon]  # the read-only piece is not tracked (not writable)
    assert [v.written for v in ds.new_vmas] == [((anon, 8),)]
    # growing into a merge with a neighbour changes its end: new again; unchanged VMAs stay trusted
    k.maps = [v for v in k.maps if not anon <= v.start < anon + 0x10000] + parse_maps(
        b"7f0000000000-7f0000010000 rw-p 00000000 00:00 0\n")
    assert _wholly_new(tr.collect()) == [anon]
    assert tr.collect().new_vmas == ()
    # the layout travels in the state: a later ckpt run trusts what was there at the clear, no more
    state = TrackingState.from_json(tr.detach().to_json())
    assert state.layout and all(len(key) == 7 for key in state.layout)
    k.maps = [v for v in k.maps if v.start != anon] + parse_maps(  # moved by mremap, other address
        b"7f0000100000-7f0000110000 rw-p 00000000 00:00 0\n")
    again = SoftDirtyTracker.attach(state, kernel=k)
    ds = again.collect()
    assert _wholly_new(ds) == [0x7f0000100000] and ds.written_pages == 16
    # no layout recorded (an image from before it was kept): everything is wholly dirty once
    blind = SoftDirtyTracker.attach(TrackingState("soft-dirty", 1234, 0), kernel=k)
    assert len(blind.collect().new_vmas) == len(ds.vmas)


def test_soft_dirty_splits_huge_pages_so_a_write_marks_one_page() -> None:
    """A THP has one bit for 512 pages: without the split after each clear, every collection of a
    4 MiB area with two pages written read as 1024 written (the kernels suite's chain case)."""
    k = FakeKernel()
    area = 0x7f0000400000  # 2 MiB-aligned, 4 MiB, both blocks THPs; a shared one is never split
    k.maps = parse_maps(b"7f0000400000-7f0000800000 rw-p 00000000 00:00 0\n"
                        b"7f0000800000-7f0000c00000 rw-s 00000000 00:01 9 /dev/zero (deleted)\n")
    k.huge = {area, area + HPAGE_PMD_SIZE, 0x7f0000800000, 0x7f0000a00000}
    tr = SoftDirtyTracker(1234, kernel=k)
    tr.start(RangeSpec())  # never cleared before: every page reads written, both blocks are split
    assert k.huge == {0x7f0000800000, 0x7f0000a00000}
    k.write(area + 3 * P)
    k.write(area + HPAGE_PMD_SIZE + 7 * P)
    ds = tr.collect()
    assert [r for v in ds.vmas if v.start == area for r in v.written] == [(area + 3 * P, 1),
                                                                          (area + HPAGE_PMD_SIZE + 7 * P, 1)]
    k.write(area + 11 * P)
    assert [r for v in tr.collect().vmas if v.start == area for r in v.written] == [(area + 11 * P, 1)]
    # peek never splits (nor clears)
    k.huge.add(area)
    tr.peek()
    assert area in k.huge


def test_soft_dirty_narrows_a_rebuilt_huge_page_by_its_digests() -> None:
    """khugepaged rebuilds a split THP within seconds, its one bit set: the block digests kept at each
    clear (and carried in the state to the next ckpt run) narrow it to the pages whose content changed."""
    k = FakeKernel()
    area = 0x7f0000400000
    k.maps = parse_maps(b"7f0000400000-7f0000800000 rw-p 00000000 00:00 0\n")
    k.huge = {area, area + HPAGE_PMD_SIZE}
    tr = SoftDirtyTracker(1234, kernel=k)
    tr.start(RangeSpec())
    k.write(area + 5 * P)
    tr.collect()  # split: the bits are exact, the digests of the pages they report are refreshed
    k.huge.add(area)  # collapsed again, with the bit set; then a write to a page of it
    k.write(area + 9 * P)
    k.bits[area + 10 * P] = (True, True)  # written with the same bytes: nothing to copy
    assert [r for v in tr.collect().vmas for r in v.written] == [(area + 9 * P, 1)]
    # the digests travel with the state (the image's digests file) to the next ckpt run
    k.huge.add(area)
    k.write(area + 20 * P)
    state = tr.detach()
    from ckpt.track.hash import save_digests, DigestRange
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "digests-1234.img")
        save_digests(path, "1234", [DigestRange(b, b + HPAGE_PMD_SIZE, dg) for b, dg in tr._digests.items()])
        again = SoftDirtyTracker.attach(dataclasses.replace(state, digests_path=path), kernel=k)
        assert [r for v in again.collect().vmas for r in v.written] == [(area + 20 * P, 1)]
    # without them (an image from before), the rebuilt block is wholly written once
    k.huge.add(area)
    k.write(area + 30 * P)
    blind = SoftDirtyTracker.attach(state, kernel=k)
    assert blind.collect().written_pages == 512


def test_huge_blocks_are_the_aligned_wholly_written_ones() -> None:
    vma = parse_maps(b"7f00001ff000-7f0000800000 rw-p 00000000 00:00 0\n")[0]
    d = VmaDirty(vma.start, vma.end, "", written=((0x7f00001ff000, 1 + 512 + 511), (0x7f0000600000, 512)))
    assert huge_blocks([d], [vma]) == [0x7f0000200000, 0x7f0000600000]


def test_soft_dirty_zero_page_is_written_and_peek_keeps_the_bits() -> None:
    """A page dropped and then only read maps the zero page, which carries no bit: it counts as written."""
    k = FakeKernel()
    heap = 0x555555558000
    tr = SoftDirtyTracker(1234, kernel=k)
    tr.start(RangeSpec())
    orig = k.scan

    def scan(pid: int, start: int, end: int):
        return [pm.PageRegion(r.start, r.end, r.categories | (pm.PAGE_IS_PFNZERO if r.start == heap + P else 0))
                for r in orig(pid, start, end)]

    k.scan = scan  # type: ignore[method-assign]
    k.bits[heap + 4 * P] = (True, True)
    assert [r for v in tr.peek().vmas for r in v.written] == [(heap + P, 1), (heap + 4 * P, 1)]
    assert "clear" not in k.log[-3:]
    assert [r for v in tr.collect().vmas for r in v.written] == [(heap + P, 1), (heap + 4 * P, 1)]
    assert [r for v in tr.collect().vmas for r in v.written] == [(heap + P, 1)]


class _RefusingInjector:
    """A target that may have no userfaultfd at all: both injected calls give EPERM, and which flags were tried."""

    def __init__(self) -> None:
        self.tried: list[int] = []

    def userfaultfd(self, flags: int) -> int:
        self.tried.append(flags)
        raise OSError(errno.EPERM, "injected userfaultfd: Operation not permitted")


def test_a_target_refused_every_userfaultfd_is_told_apart_from_one_we_may_not_trace() -> None:
    tracker = UffdWpTracker.__new__(UffdWpTracker)  # only its pid is used to create
    tracker.pid = 4242
    inj = _RefusingInjector()
    with pytest.raises(AccessDenied, match="process 4242 may not create a userfaultfd, not even a user-mode-only") as e:
        tracker._create(inj)
    assert e.value.hint == "track it with --track hash"
    assert inj.tried == [os.O_CLOEXEC | os.O_NONBLOCK, os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY]


def test_every_back_end_is_reachable_from_the_cheap_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-dump chooses its back-end from the probes that seize nothing: each back-end's needs are among them
    (soft-dirty once needed a probe only `ckpt check` ran, and a 6.1 kernel fell back to hash)."""
    from ckpt import features

    monkeypatch.setattr(features, "_cheap_probe", lambda name: features.Probe(name, True, "faked"))
    assert all(features._usable(features.tracking_working()).values())
