"""ckpt.resources.cow's pagemap arithmetic, on synthetic pagemap files (the e2e tests use real processes)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ckpt.image.pb import mm_pb2
from ckpt.kernel.pagemap import PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP
from ckpt.resources import cow
from ckpt.resources.memory import _copied, _EVERYTHING, _without

PAGE = 4096
BASE = 0x10000000  # the address of the first entry written below


def _pagemap(tmp_path: Path, name: str, entries: list[int]) -> int:
    """A file laid out as /proc/PID/pagemap with ``entries`` for the pages from BASE; an open fd."""
    path = tmp_path / name
    with open(path, "wb") as f:
        f.seek(BASE // PAGE * 8)
        f.write(struct.pack(f"<{len(entries)}Q", *entries))
    return os.open(path, os.O_RDONLY)


def test_shared_pages_same_frame_present_in_both(tmp_path: Path) -> None:
    p = PM_PRESENT
    parent = [p | 100, p | 101, p | 102, p | 103, p | 104, 0, PM_SWAP | 7, p | 108]
    child = [p | 100, p | PM_SOFT_DIRTY | 101, p | 999, p | PM_MMAP_EXCLUSIVE | 103, p | 104, 0, PM_SWAP | 7,
             p | 108]
    a, b = _pagemap(tmp_path, "a", parent), _pagemap(tmp_path, "b", child)
    try:
        runs = cow.shared_pages(a, b, BASE, BASE + len(parent) * PAGE)
    finally:
        os.close(a)
        os.close(b)
    # the soft-dirty and exclusive bits do not count; a different frame, an absent page and a swap entry
    # are not shared
    assert runs == [(BASE, BASE + 2 * PAGE), (BASE + 3 * PAGE, BASE + 5 * PAGE), (BASE + 7 * PAGE, BASE + 8 * PAGE)]


def test_not_exclusive_pages(tmp_path: Path) -> None:
    p, x = PM_PRESENT, PM_MMAP_EXCLUSIVE
    fd = _pagemap(tmp_path, "a", [p | x | 1, p | 2, p | 3, p | x | 4, 0, PM_SWAP | 5, p | 6])
    try:
        got = cow.not_exclusive(fd, [(BASE, BASE + 7 * PAGE)])
    finally:
        os.close(fd)
    assert got == [(BASE + PAGE, BASE + 3 * PAGE), (BASE + 6 * PAGE, BASE + 7 * PAGE)]


def test_runs_left_to_the_parent_and_copied() -> None:
    runs = [(0, 10 * PAGE, False), (12 * PAGE, 13 * PAGE, True), (20 * PAGE, 30 * PAGE, False)]
    assert _without(runs, [(2 * PAGE, 4 * PAGE), (25 * PAGE, 40 * PAGE)]) == [
        (0, 2 * PAGE, False), (4 * PAGE, 10 * PAGE, False), (12 * PAGE, 13 * PAGE, True), (20 * PAGE, 25 * PAGE, False)]
    v = mm_pb2.Vma(start=0, end=40 * PAGE)
    assert _copied(runs, _EVERYTHING, [0], v) == [(0, 10 * PAGE), (20 * PAGE, 30 * PAGE)]
    dirty = [(5 * PAGE, 6 * PAGE), (29 * PAGE, 50 * PAGE)]
    assert _copied(runs, dirty, [s for s, _ in dirty], v) == [(5 * PAGE, 6 * PAGE), (29 * PAGE, 30 * PAGE)]


def test_keep_inherited_drops_the_gaps() -> None:
    calls = []

    class Inj:
        def madvise(self, addr: int, length: int, advice: int) -> None:
            calls.append((addr, length))

    v = mm_pb2.Vma(start=0, end=10 * PAGE)
    v.shared_with_parent.add(start=PAGE, end=3 * PAGE)
    v.shared_with_parent.add(start=5 * PAGE, end=10 * PAGE)
    cow.keep_inherited(Inj(), v)  # type: ignore[arg-type]
    assert calls == [(0, PAGE), (3 * PAGE, 2 * PAGE)]
