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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.framework import Context, Row, bench
from bench.track import _dirty
from bench.workload import BenchChild, build_c

REPO = Path(__file__).resolve().parent.parent
MAZE_SRC = REPO / "tests" / "scenarios" / "vma_maze.c"
MAZE_BIN = Path(__file__).resolve().parent / "bin" / "vma_maze"
#: The issue's process of 30,744 mappings: 30,720 writable ones of 4 pages, rw- and rwx alternating
#: (they cannot merge), beside the program's own (30,745 lines of maps here).
MAZE_MAPS, MAZE_PAGES = 30720, 4


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


class Maze(BenchChild):
    """A running tests/scenarios/vma_maze.c: MAZE_MAPS small writable mappings, every page written once."""

    what = "vma maze"

    def __init__(self, ready_timeout: float = 120.0) -> None:
        self.ready_timeout = ready_timeout
        self.area = self.npages = 0

    def start(self) -> "Maze":
        self._spawn_logged([str(build_c(MAZE_SRC, MAZE_BIN)), str(MAZE_MAPS), str(MAZE_PAGES)])
        try:
            words = self._readline(time.monotonic() + self.ready_timeout).split()
            if words[:1] != ["READY"]:
                raise RuntimeError(f"vma_maze said {' '.join(words)!r}")
            self.area = int(words[1].removeprefix("area="), 16)
            self.npages = int(words[2].removeprefix("npages="))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        self._close_log()


@bench("incremental", order=160, workload=False)
def many_mappings(ctx: Context) -> Iterator[Row]:
    """Issue 19: a pre-dump costs what was written, not how many mappings there are.  30,720 mappings,
    1 % of their pages written from outside between rounds, then the final delta dump (``-R``)."""
    from ckpt import api

    root = Path(tempfile.mkdtemp(prefix="bench-maze-", dir=ctx.tmpdir))
    try:
        with Maze() as m:
            try:
                nmaps = sum(1 for _ in open(f"/proc/{m.pid}/maps"))
                area = [(m.area, m.npages * 4096)]
                nbytes = m.npages * 4096
                first = api.pre_dump(m.pid, root / "0")
                yield Row("predump.maps_full", f"ckpt pre-dump, {MAZE_MAPS:,} mappings (first: all pages)", nbytes,
                          (first.total_seconds,),
                          notes=f"{nmaps:,} lines of maps; {first.pages_stored} pages; tracker start "
                                f"{first.collect_seconds * 1e3:.0f} ms, target frozen {first.frozen_seconds * 1e3:.1f} ms")
                times, last, parent, written = [], None, root / "0", 0
                for n in range(1, ctx.runs + 1):
                    written = _dirty(m.pid, area, 0.01)
                    last = api.pre_dump(m.pid, root / str(n), prev_images_dir=parent)
                    times.append(last.total_seconds)
                    parent = root / str(n)
                assert last is not None
                yield Row("predump.maps_delta_1pct", f"ckpt pre-dump, {MAZE_MAPS:,} mappings, 1 % dirty (second)",
                          nbytes, tuple(times),
                          notes=f"goal ≤ 0.5 s; {written} pages written, {last.pages_stored} copied; get+clear "
                                f"{last.collect_seconds * 1e3:.0f} ms, copy {last.copy_seconds * 1e3:.0f} ms",
                          error=None if last.pages_stored >= written and not last.full else
                          f"{'full copy' if last.full else 'copied fewer pages than written'}")
                written = _dirty(m.pid, area, 0.01)
                final = api.dump_delta(m.pid, root / "final", prev_images_dir=parent, leave_running=True)
                yield Row("dump.maps_delta_1pct", f"ckpt dump --prev-images-dir -R, {MAZE_MAPS:,} mappings, 1 % dirty",
                          nbytes, (final.total_seconds,),
                          notes=f"{written} pages written, {final.pages_stored} stored; frozen "
                                f"{final.frozen_seconds * 1e3:.0f} ms")
            finally:
                try:
                    api.track_stop(m.pid)
                except Exception:  # noqa: BLE001 - best effort: the maze dies next
                    pass
    finally:
        shutil.rmtree(root, ignore_errors=True)
