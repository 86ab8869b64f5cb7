"""Dirty tracking, both sides: the tracker's get+clear, and the target's slowdown while tracked.

Get+clear: one ``collect()`` over the workload with 1 % and 10 % of its pages
written, per back-end.  Pages are dirtied from outside with
``process_vm_writev`` (one byte per page, spread evenly: the many-regions case,
which DESIGN §2 measured as the costly one for PAGEMAP_SCAN); only the
``collect()`` is timed.  The first row of each back-end is the initial cost: for
uffd-wp the injection, registration and first write-protect of every range; for
hash the first full read and digest.

Target slowdown (``track.write.*``, ``track.sustain.*``): bench/writer.c times
its own writes (CLOCK_MONOTONIC around the loop), so the bench's scheduling
stays out of the numbers.  Its region (256 MiB of 4 KiB pages, all written once
beforehand) gets one 8-byte write per page per round, in address order and in
a random order: untracked (the baseline), then right after a ``collect()`` —
for uffd-wp every write is then the first to a write-protected page and takes
the async-WP fault (DESIGN §2: ~670 ns extra); for hash the target pays nothing
per write (its price is the scan above), only a colder cache after the scan
has read all 256 MiB.  A round's rate counts the pages dirtied, so "vs" is
untracked ns / tracked ns; the notes give ns per write and the slowdown.  The
sustained rows are the realistic case: random writes for 0.5 s while the bench
collects every 100 ms (back to back when a collect takes longer).  At ~70 M
writes/s every page of the region is written again in each interval, the worst
case for uffd-wp (one fault per page per interval); a target with a smaller
working set slows less.  Their time and rate are per 2^20 writes of 8 bytes,
the notes give writes/s.  A tracked round that is not collected whole is an
error.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.framework import Context, Row, bench
from bench.writer import Writer
from ckpt.kernel import vm
from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.track import Tracker

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
        what = {"uffd-wp": "start: inject, register, first write-protect",
                "soft-dirty": "start: freeze, read bits, clear_refs"}.get(method, "start: first read + digest")
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


@bench("track", order=61)
def soft_dirty(ctx: Context) -> Iterator[Row]:
    """Kernels with CONFIG_MEM_SOFT_DIRTY (the 6.1 / 6.12 guests; not this project's host): get+clear is
    freeze, batched pagemap reads of bit 55, clear_refs "4", thaw.  No rows where the kernel lacks it."""
    from ckpt.errors import Unsupported
    from ckpt.features import select_tracking, tracking_working

    try:
        select_tracking(tracking_working(), "soft-dirty")
    except Unsupported:
        return  # not a failure: this kernel has no soft-dirty (this project's host)
    yield from _rows(ctx, "soft-dirty", "softdirty")


# --------------------------------------------------------------------------- the target's side

WRITER_MIB = 256
#: Length of one sustained run, and the bench's collection period during it.
SUSTAIN_S = 0.5
COLLECT_EVERY_S = 0.1
#: Sustained rows are expressed per this many writes (Row holds one size for all runs).
NOMINAL_WRITES = 1 << 20
_ORDERS = (("seq", "address order"), ("rand", "random order"))
_TRACKED = (("hash", "hash", "hash-tracked"), ("uffd", "uffd-wp", "uffd-wp (page write-protected)"))


@contextmanager
def _tracking(pid: int, method: str) -> Iterator[Tracker]:
    """A started tracker, stopped on every way out (the target must be left untouched)."""
    from ckpt.track import open_tracker

    tracker = open_tracker(pid, method)
    try:
        yield tracker
    finally:
        tracker.stop()


def _rounds(ctx: Context, w: Writer, order: str, tracker: Tracker | None) -> tuple[tuple[float, ...], int]:
    """Seconds of ``ctx.runs`` rounds; with a tracker each follows a collect() and must be collected whole."""
    times = []
    if tracker is not None:
        tracker.collect()  # clean slate: every page protected (uffd-wp) or hashed as it is now
    for _ in range(ctx.runs):
        n, seconds = w.run(order)
        times.append(seconds)
        if tracker is not None:
            found = tracker.collect().written_pages  # also the clean slate of the next round
            if found < n:
                raise RuntimeError(f"{tracker.method}: {n} pages written, {found} collected")
    return tuple(times), w.pages


def _sustain(ctx: Context, w: Writer, tracker: Tracker | None) -> tuple[tuple[float, ...], list[float], str]:
    """Seconds per NOMINAL_WRITES of each run, writes/s of each run, and what the tracker did meanwhile."""
    times, rates = [], []
    collects, pages, busy = 0, 0, 0.0
    for _ in range(ctx.runs):
        if tracker is not None:
            tracker.collect()
        w.send(f"sustain {round(SUSTAIN_S * 1000)}")
        due = time.monotonic() + COLLECT_EVERY_S
        while (got := w.reply(max(0.0, due - time.monotonic()))) is None:
            if tracker is not None:
                t0 = time.perf_counter()
                pages += tracker.collect().written_pages
                busy += time.perf_counter() - t0
                collects += 1
            due += COLLECT_EVERY_S
        n, seconds = got
        times.append(seconds / n * NOMINAL_WRITES)
        rates.append(n / seconds)
    done = ""
    if tracker is not None and collects:
        done = (f"{collects / ctx.runs:.1f} collects per run, {pages / collects:.0f} pages and "
                f"{busy / collects * 1e3:.0f} ms each")
    return tuple(times), rates, done


@bench("track", order=62)
def write_overhead(ctx: Context) -> Iterator[Row]:
    """Per-write cost in the target: untracked, hash-tracked and uffd-wp-tracked, in one writer process."""
    from ckpt.track import choose_method

    choose_method()  # probe the kernel once, outside anything timed
    with Writer(64 if ctx.quick else WRITER_MIB) as w:
        for order, _ in _ORDERS:  # warm-up: code, page tables, the order array
            w.run(order)
        base: dict[str, float] = {}
        for order, label in _ORDERS:
            times, n = _rounds(ctx, w, order, None)
            base[order] = statistics.median(times) / n
            yield Row(f"track.write.{order}.untracked", f"target: a write to each page, {label}, untracked",
                      n * PAGE_SIZE, times, notes=f"{base[order] * 1e9:.1f} ns/write, {n} pages")
        times, rates, _ = _sustain(ctx, w, None)
        base_rate = statistics.median(rates)
        yield Row("track.sustain.untracked", "target: random writes for 0.5 s, untracked",
                  8 * NOMINAL_WRITES, times, notes=f"{base_rate / 1e6:.1f} M writes/s")

        for key, method, label in _TRACKED:
            try:
                with _tracking(w.pid, method) as tracker:
                    for order, olabel in _ORDERS:
                        times, n = _rounds(ctx, w, order, tracker)
                        ns = statistics.median(times) / n
                        yield Row(f"track.write.{order}.{key}", f"target: a write to each page, {olabel}, {label}",
                                  n * PAGE_SIZE, times, baseline=f"track.write.{order}.untracked",
                                  notes=f"{ns * 1e9:.1f} ns/write, {(ns - base[order]) * 1e9:+.0f} ns, "
                                        f"{ns / base[order]:.1f}× untracked")
                    times, rates, done = _sustain(ctx, w, tracker)
                    rate = statistics.median(rates)
                    yield Row(f"track.sustain.{key}", f"target: random writes for 0.5 s, {method}, "
                                                      f"collect every {COLLECT_EVERY_S * 1e3:.0f} ms",
                              8 * NOMINAL_WRITES, times, baseline="track.sustain.untracked",
                              notes=f"{rate / 1e6:.1f} M writes/s ({rate / base_rate:.2f}× untracked); {done}")
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # one back-end failing must not hide the other's rows
                yield Row(f"track.write.{key}", f"target: writes, {label}", 0, (),
                          error=f"{type(exc).__name__}: {exc}")
