"""Dirty tracking: one get+clear over the workload with 1 % and 10 % of its pages written, per back-end.

Pages are dirtied from outside with ``process_vm_writev`` (one byte per page,
spread evenly: the many-regions case, which DESIGN §2 measured as the costly
one for PAGEMAP_SCAN); only the ``collect()`` is timed.  The first row of each
back-end is the initial cost: for uffd-wp the injection, registration and
first write-protect of every range; for hash the first full read and digest.
Per-write overhead in the target is not measured here (DESIGN §2: ~670 ns
extra on the first write to a protected page).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from bench.framework import Context, Row, bench
from ckpt.kernel import vm
from ckpt.kernel.arch_x86_64 import PAGE_SIZE

_BYTE = bytearray(1)


def _dirty(pid: int, regions: list[tuple[int, int]], fraction: float) -> int:
    """Write one byte into every ``1/fraction``-th page of the workload; pages written."""
    step = max(1, round(1 / fraction))
    _BYTE[0] = (_BYTE[0] + 1) % 251 + 1  # a new value each round, so content digests change too
    addr_of_one = vm.buffer_address(_BYTE)
    remote = [(a, 1) for start, length in regions for a in range(start, start + length, step * PAGE_SIZE)]
    vm.process_vm_writev(pid, [(addr_of_one, 1)] * len(remote), remote)
    return len(remote)


def _rows(ctx: Context, method: str, key: str) -> Iterator[Row]:
    from ckpt.track import choose_method, open_tracker

    choose_method()  # probe the kernel once, outside the timed start
    wl = ctx.workload
    regions = [(r.addr, r.length) for r in wl.regions]
    t0 = time.perf_counter()
    tracker = open_tracker(wl.pid, method)
    first = time.perf_counter() - t0
    try:
        what = "start: inject, register, first write-protect" if method == "uffd-wp" else "start: first read + digest"
        yield Row(f"track.{key}.start", f"{method} {what}", wl.total, (first,))
        for fraction in (0.01, 0.10):
            times, found, written = [], 0, 0
            for _ in range(ctx.runs):
                tracker.collect()  # clean slate
                written = _dirty(wl.pid, regions, fraction)
                t0 = time.perf_counter()
                ds = tracker.collect()
                times.append(time.perf_counter() - t0)
                found = ds.written_pages
            pct = int(fraction * 100)
            yield Row(f"track.{key}.collect_{pct}pct", f"{method} get+clear, {pct} % dirty", wl.total, tuple(times),
                      notes=f"{written} pages written, {found} reported", error=None if found >= written else
                      f"missed {written - found} pages")
    finally:
        tracker.stop()


@bench("track", order=60)
def uffd_wp(ctx: Context) -> Iterator[Row]:
    yield from _rows(ctx, "uffd-wp", "uffd")


@bench("track", order=61)
def hash_digests(ctx: Context) -> Iterator[Row]:
    yield from _rows(ctx, "hash", "hash")
