"""The arithmetic of AIO rings (ckpt.kernel.aio): which io_setup request makes a ring of a given size.

The expected sizes are what io_setup made on this host (2 possible CPUs): nr_events 1 and 8 → one page
(ring->nr 127), 200 → 4 pages (511), 300 → 5 pages (639), 65000 → 1016 pages (130047).
"""

from __future__ import annotations

import math

import pytest

from ckpt.kernel.aio import nr_events_for, possible_cpus, ring_nr


def _pages(nr_events: int, cpus: int) -> int:
    """fs/aio.c: ioctx_alloc doubles max(nr_events, 4 × CPUs), aio_setup_ring adds 2 and rounds to pages."""
    slots = max(nr_events, 4 * cpus) * 2 + 2
    return math.ceil((32 + 32 * slots) / 4096)


@pytest.mark.parametrize(("asked", "pages", "nr"), [(1, 1, 127), (8, 1, 127), (200, 4, 511), (300, 5, 639),
                                                    (65000, 1016, 130047)])
def test_the_sizes_seen_here(asked: int, pages: int, nr: int) -> None:
    assert _pages(asked, 2) == pages and ring_nr(pages * 4096) == nr


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 64])
def test_the_request_chosen_makes_a_ring_of_the_same_size_and_is_the_smallest(cpus: int) -> None:
    for pages in range(1, 300):
        asked = nr_events_for(pages * 4096, cpus)
        if asked is None:  # this many CPUs make only bigger rings
            assert _pages(1, cpus) > pages
            continue
        assert _pages(asked, cpus) == pages
        assert asked == 1 or _pages(asked - 1, cpus) < pages


def test_possible_cpus_reads_ranges_and_lists() -> None:
    assert [possible_cpus(t) for t in ("0\n", "0-1\n", "0-3,5\n", "0-3,8-11\n")] == [1, 2, 5, 8]
