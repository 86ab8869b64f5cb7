"""Address-range selection of pre-dumps: the pure parts (canonical form, what a pre-dump copies,
what the delta planner counts as dirty).  The end-to-end behaviour is in e2e/test_incremental_ranges.py."""

from __future__ import annotations

import pytest

from ckpt.errors import UsageError
from ckpt.image.pb import mm_pb2
from ckpt.image.records import ProcessInfo, TrackingInfo
from ckpt.incremental import _clip_layout, _dirty_intervals, format_ranges, normalize_ranges
from ckpt.track.base import DirtySet, RangeSpec, VmaDirty

P = 4096
K = mm_pb2.Vma.Kind
A = (0x7F0000000000, 0x7F0000000000 + 16 * P)
B = (0x7F0000100000, 0x7F0000100000 + 16 * P)


def _vma(iv: tuple[int, int], kind: int = K.ANON_PRIVATE) -> mm_pb2.Vma:
    return mm_pb2.Vma(start=iv[0], end=iv[1], kind=kind, prot=3)


def test_normalize_merges_and_rejects() -> None:
    spec = normalize_ranges([(B[0], B[1]), (A[0], A[0] + 2 * P), (A[0] + P, A[1])], None)
    assert spec == RangeSpec((A, B), ())
    assert normalize_ranges(None, None) == RangeSpec()
    assert normalize_ranges(None, [B]) == RangeSpec(None, (B,))
    with pytest.raises(UsageError, match="no address range"):
        normalize_ranges([], None)
    with pytest.raises(UsageError, match="page-aligned"):
        normalize_ranges([(A[0], A[0] + 100)], None)
    with pytest.raises(UsageError, match="--exclude-ranges"):
        normalize_ranges(None, [(B[1], B[0])])


def test_inventory_round_trip_and_format() -> None:
    for spec in (RangeSpec(), RangeSpec((A,), ()), RangeSpec(None, (B,)), RangeSpec((A, B), ((A[0], A[0] + P),))):
        info = ProcessInfo(7, 1, (7,), 99, TrackingInfo("uffd-wp", 1023, 5, spec.include, spec.exclude))
        back = ProcessInfo.from_pb(info.to_pb())
        assert back == info and normalize_ranges(back.tracking.include, back.tracking.exclude) == spec
    assert format_ranges(RangeSpec()) == "all"
    assert format_ranges(RangeSpec(None, (B,))) == f"all minus {B[0]:x}-{B[1]:x}"


def test_clip_layout_is_what_a_predump_copies() -> None:
    layout = [_vma(A), _vma(B)]
    assert _clip_layout(layout, RangeSpec()) == layout
    got = _clip_layout(layout, RangeSpec(((A[0] + 4 * P, B[0] + 2 * P),), ((A[0] + 8 * P, A[0] + 9 * P),)))
    assert [(v.start, v.end) for v in got] == [(A[0] + 4 * P, A[0] + 8 * P), (A[0] + 9 * P, A[1]),
                                               (B[0], B[0] + 2 * P)]
    assert all(v.kind == K.ANON_PRIVATE and v.prot == 3 for v in got)
    assert _clip_layout(layout, RangeSpec(None, (A, B))) == []


def test_everything_outside_the_tracked_ranges_is_dirty() -> None:
    """The final dump's layout is the whole process: a page no tracker watched is copied
    (never left to the parent), even when the parent holds it."""
    written = (A[0] + 3 * P, 1)
    ds = DirtySet("uffd-wp", (VmaDirty(A[0], A[0] + 8 * P, "", written=(written,)),))
    dirty = _dirty_intervals(ds, [_vma(A), _vma(B)])
    assert dirty == [(A[0] + 3 * P, A[0] + 4 * P), (A[0] + 8 * P, A[1]), B]
