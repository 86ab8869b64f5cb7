"""Pre-dumps and the final delta dump on the workload (issue 4).

A full pre-dump starts tracking; then, per round, 1 % or 10 % of the
workload's pages are dirtied from outside (one byte per page, spread evenly:
the many-regions case) and a delta pre-dump copies only those.  Last, a final
frozen dump as a delta of the chain (``-R``, tracking ends with it): its
frozen time is what an incremental checkpoint buys over a full dump.

These run in-process through the API (the issue's "1 % pre-dump of 1 GiB in
≤ 50 ms" is about the operation, not Python's start-up); bytes written are
the image sizes on disk.  The target is frozen during a uffd-wp pre-dump
only for the injections that create and park the tracker (the first
pre-dump), never by a delta: each row's notes give that frozen time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from bench.framework import Context, Row, bench
from bench.track import _dirty


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


@bench("incremental", order=150)
def predump_chain(ctx: Context) -> Iterator[Row]:
    from ckpt import api

    wl = ctx.workload
    regions = [(r.addr, r.length) for r in wl.regions]
    root = ctx.tmpdir / "chain"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        first = api.pre_dump(wl.pid, root / "0")
        yield Row("predump.full", "ckpt pre-dump, first (all pages, starts tracking)", wl.total,
                  (first.total_seconds,), baseline="limit.zstd1_t1",
                  notes=f"{first.pages_stored} pages, image {_size(root / '0') / 2**20:.0f} MiB; "
                        f"tracker start {first.collect_seconds * 1e3:.0f} ms, target frozen "
                        f"{first.frozen_seconds * 1e3:.1f} ms")
        parent, n = root / "0", 1
        for fraction in (0.01, 0.10):
            times, last = [], None
            for _ in range(ctx.runs):
                written = _dirty(wl.pid, regions, fraction)
                last = api.pre_dump(wl.pid, root / str(n), prev_images_dir=parent)
                times.append(last.total_seconds)
                parent, n = root / str(n), n + 1
            assert last is not None
            pct = int(fraction * 100)
            yield Row(f"predump.delta_{pct}pct", f"ckpt pre-dump, {pct} % of pages written", wl.total, tuple(times),
                      notes=f"{written} pages written, {last.pages_stored} copied, {last.pages_parent} in parent; "
                            f"get+clear {last.collect_seconds * 1e3:.1f} ms, copy {last.copy_seconds * 1e3:.0f} ms, "
                            f"image {_size(parent) / 2**20:.1f} MiB, target frozen {last.frozen_seconds * 1e3:.1f} ms",
                      error=None if last.pages_stored >= written and not last.full else
                      f"{'full copy' if last.full else 'copied fewer pages than written'}")
        written = _dirty(wl.pid, regions, 0.01)
        final = api.dump_delta(wl.pid, root / "final", prev_images_dir=parent, leave_running=True)
        yield Row("dump.delta_1pct", "ckpt dump --prev-images-dir (final, frozen), 1 % written", wl.total,
                  (final.total_seconds,),
                  notes=f"frozen {final.frozen_seconds * 1e3:.0f} ms, {final.pages_stored} pages stored, "
                        f"image {_size(root / 'final') / 2**20:.1f} MiB")
    finally:
        try:
            api.track_stop(wl.pid)  # whatever happened, leave the shared workload untracked
        except Exception:
            pass
        shutil.rmtree(root, ignore_errors=True)
