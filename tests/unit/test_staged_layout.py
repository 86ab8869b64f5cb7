"""The layout arithmetic of a staged restore (ckpt.resources.memory): diff_layout, intervals, clip_sources."""

from __future__ import annotations

from ckpt.image.pb import common_pb2, mm_pb2
from ckpt.image.records import PageSource
from ckpt.kernel.mman import MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE
from ckpt.resources.memory import clip_sources, diff_layout, intersect, merge_intervals, subtract

K = mm_pb2.Vma.Kind
P = 4096
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS


def anon(start: int, end: int, prot: int = RW, flags: str = "rd wr mr mw me ac") -> mm_pb2.Vma:
    return mm_pb2.Vma(start=start * P, end=end * P, prot=prot, flags=ANON, kind=K.ANON_PRIVATE, vm_flags=flags)


def file(start: int, end: int, pgoff: int, ino: int = 7) -> mm_pb2.Vma:
    return mm_pb2.Vma(start=start * P, end=end * P, prot=PROT_READ, flags=MAP_PRIVATE, kind=K.FILE_PRIVATE,
                      name="/lib/x.so", pgoff=pgoff * P, file=common_pb2.FileIdentity(dev=1, ino=ino, size=1 << 20))


def pages(*ivs: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    return tuple((s * P, e * P) for s, e in ivs)


def test_same_layout_keeps_everything() -> None:
    layout = [anon(10, 20), file(30, 34, 0), mm_pb2.Vma(start=50 * P, end=52 * P, kind=K.VDSO)]
    d = diff_layout(layout, layout)
    assert d.kept == pages((10, 20), (30, 34)) and d.removed == () and d.added == ()


def test_a_vma_that_grew_keeps_its_old_part() -> None:
    d = diff_layout([anon(10, 20)], [anon(8, 24)])
    assert d.kept == pages((10, 20)) and d.removed == ()
    assert [(v.start // P, v.end // P) for v in d.added] == [(8, 10), (20, 24)]


def test_a_vma_that_shrank_or_changed_protection() -> None:
    d = diff_layout([anon(10, 20), anon(30, 40)], [anon(10, 15), anon(30, 35), anon(35, 40, PROT_READ)])
    assert d.kept == pages((10, 15), (30, 35))
    assert d.removed == pages((15, 20), (35, 40))
    assert [(v.start // P, v.end // P, v.prot) for v in d.added] == [(35, 40, PROT_READ)]


def test_flags_that_do_not_change_the_mapping_are_ignored() -> None:
    # soft-dirty and uffd-wp registration come and go; madvise flags (hg) make another mapping
    d = diff_layout([anon(10, 20, flags="rd wr sd")], [anon(10, 20, flags="rd wr uw")])
    assert d.kept == pages((10, 20)) and not d.added
    d = diff_layout([anon(10, 20)], [anon(10, 20, flags="rd wr hg")])
    assert d.kept == () and d.removed == pages((10, 20)) and len(d.added) == 1


def test_file_mappings_need_the_same_offset_at_the_same_address() -> None:
    d = diff_layout([file(30, 34, 0)], [file(28, 34, 0)])  # another offset at 30: a new mapping
    assert d.kept == () and d.removed == pages((30, 34))
    d = diff_layout([file(30, 34, 2)], [file(28, 34, 0)])  # the same file bytes at 30..34: grown downwards
    assert d.kept == pages((30, 34))
    assert [(v.start // P, v.end // P, v.pgoff // P) for v in d.added] == [(28, 30, 0)]
    d = diff_layout([file(30, 34, 2)], [file(30, 36, 2)])
    assert [(v.start // P, v.pgoff // P) for v in d.added] == [(34, 6)]  # the piece's own file offset
    d = diff_layout([file(30, 34, 0, ino=7)], [file(30, 34, 0, ino=8)])
    assert d.kept == ()


def test_shared_anonymous_memory_is_never_carried_over() -> None:
    shm = mm_pb2.Vma(start=10 * P, end=12 * P, prot=RW, flags=MAP_SHARED | MAP_ANONYMOUS, kind=K.ANON_SHARED,
                     file=common_pb2.FileIdentity(ino=99))
    d = diff_layout([shm], [shm])
    assert d.kept == () and d.removed == pages((10, 12)) and len(d.added) == 1


def test_interval_arithmetic() -> None:
    assert merge_intervals([(5, 7), (1, 3), (3, 4), (6, 9), (10, 10)]) == [(1, 4), (5, 9)]
    a = [(0, 10), (20, 30), (40, 50)]
    b = [(5, 25), (28, 42), (45, 46)]
    assert intersect(a, b) == [(5, 10), (20, 25), (28, 30), (40, 42), (45, 46)]
    assert subtract(a, b) == [(0, 5), (25, 28), (42, 45), (46, 50)]
    assert subtract(a, []) == a and intersect(a, []) == []
    assert subtract([(0, 100)], [(0, 100)]) == []


def test_clip_sources_moves_data_offsets_along() -> None:
    srcs = [PageSource(10 * P, 10, 2, 100 * P), PageSource(30 * P, 4, None)]
    assert clip_sources(srcs, pages((12, 14), (19, 31))) == [
        PageSource(12 * P, 2, 2, 102 * P), PageSource(19 * P, 1, 2, 109 * P), PageSource(30 * P, 1, None, 0)]
