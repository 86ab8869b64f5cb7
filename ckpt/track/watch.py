"""Watching a process's writes over time, and tracking left parked between ckpt runs.

``watch`` is the loop behind ``ckpt watch`` (pages written per interval and the
dirty rate that sizes a migration); ``track_start``/``track_stop`` are behind
``ckpt track``.  They sit on :func:`ckpt.track.open_tracker`, whatever the back-end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UsageError
from ..kernel.arch_x86_64 import PAGE_SIZE
from . import RangeSpec, TrackingLost, open_tracker
from .base import TrackingState
from .uffd_wp import UffdWpTracker, find_userfaultfds

__all__ = ["WatchRange", "WatchSample", "watch", "track_start", "track_stop", "tracking_state_path", "STATE_DIR_DEFAULT"]

#: Where ``ckpt track --start`` keeps the state a later ``ckpt`` needs (override: $CKPT_STATE_DIR).
STATE_DIR_DEFAULT = "/run/ckpt"


@dataclass(frozen=True)
class WatchRange:
    """One tracked range in one interval of :func:`watch`."""

    start: int
    end: int
    path: str
    written_pages: int
    hole_pages: int
    new: bool
    mb_s: float


@dataclass(frozen=True)
class WatchSample:
    """One interval of :func:`watch`: how much the target wrote, and how fast (MB = 10^6 bytes)."""

    interval: int
    seconds: float
    method: str
    written_pages: int
    hole_pages: int
    tracked_pages: int
    new_ranges: int
    gone_ranges: int
    scan_ms: float
    mb_s: float
    ranges: tuple[WatchRange, ...]

    def as_dict(self) -> dict[str, object]:
        d = {k: getattr(self, k) for k in ("interval", "seconds", "method", "written_pages", "hole_pages",
                                            "tracked_pages", "new_ranges", "gone_ranges", "scan_ms", "mb_s")}
        d["ranges"] = [{"start": hex(r.start), "end": hex(r.end), "path": r.path, "written_pages": r.written_pages,
                        "hole_pages": r.hole_pages, "new": r.new, "mb_s": r.mb_s} for r in self.ranges]
        return d


def watch(pid: int, *, interval: float = 1.0, count: int | None = None,
          ranges: "tuple[tuple[int, int], ...] | None" = None, exclude: "tuple[tuple[int, int], ...]" = (),
          method: str | None = None) -> Iterator[WatchSample]:
    """Track ``pid`` and yield, every ``interval`` seconds, the pages written per range and the dirty rate.

    The rate counts written pages (the bytes a migration would have to send
    again); new ranges count in full.  Closing the generator — or Ctrl-C while
    it sleeps — stops tracking and removes it from the target.  Wrap it in
    ``contextlib.closing`` when breaking out early.
    """
    
    if interval <= 0:
        raise UsageError(f"--interval must be positive, not {interval}")
    tracker = open_tracker(pid, method, ranges=RangeSpec(ranges, tuple(exclude)))
    try:
        last = time.monotonic()
        n = 0
        while count is None or n < count:
            time.sleep(max(0.0, last + interval - time.monotonic()))
            ds = tracker.collect()
            secs = max(ds.timestamp - last, 1e-9)
            last = ds.timestamp
            n += 1
            rate = lambda pages: round(pages * PAGE_SIZE / secs / 1e6, 3)  # noqa: E731
            rs = tuple(WatchRange(v.start, v.end, v.path, v.written_pages, v.hole_pages, v.new, rate(v.written_pages))
                       for v in ds.vmas)
            yield WatchSample(n, round(secs, 4), ds.method, ds.written_pages, ds.hole_pages, ds.tracked_pages,
                              len(ds.new_vmas), len(ds.gone), round(ds.elapsed * 1e3, 3), rate(ds.written_pages), rs)
    finally:
        tracker.stop()


def tracking_state_path(pid: int) -> str:
    """The state file ``ckpt track --start`` writes for ``pid``."""
    return os.path.join(os.environ.get("CKPT_STATE_DIR", STATE_DIR_DEFAULT), f"track-{pid}.json")


def tracking_states() -> list[TrackingState]:
    """Every readable state file: the trackers parked by this machine's ckpt runs (some may be stale)."""
    d = os.environ.get("CKPT_STATE_DIR", STATE_DIR_DEFAULT)
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("track-") and n.endswith(".json"))
    except OSError:
        return []
    out = []
    for n in names:
        try:
            out.append(TrackingState.load(os.path.join(d, n)))
        except (OSError, ValueError, TypeError):
            continue  # half-written or foreign: not evidence of anything
    return out


def track_start(pid: int, *, method: str | None = None, ranges: "tuple[tuple[int, int], ...] | None" = None,
                exclude: "tuple[tuple[int, int], ...]" = ()) -> TrackingState:
    """Start tracking ``pid`` and leave it running (parked) for later ``ckpt`` processes; saves the state file."""
    path = tracking_state_path(pid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digests = os.path.join(os.path.dirname(path), f"digests-{pid}.img")
    state = open_tracker(pid, method, ranges=RangeSpec(ranges, tuple(exclude)), digests_path=digests).detach()
    state.save(path)
    return state


def track_stop(pid: int, *, fd: int | None = None) -> str:
    """Remove tracking left in ``pid``; returns what was done.

    The tracker is identified by the state file ``track --start`` (or a
    pre-dump) saved: its fd number *and* the userfaultfd's inode.  Without a
    state file only an explicit ``fd`` is closed, after checking it is a
    userfaultfd: fdinfo cannot tell our userfaultfd from one the program
    uses itself, and closing the program's own would break it.
    """
    path = tracking_state_path(pid)
    if os.path.exists(path):
        state = TrackingState.load(path)
        try:
            open_tracker(pid, state=state).stop()
            done = f"stopped {state.method} tracking of process {pid}"
        except TrackingLost as e:
            done = f"tracking of process {pid} was already gone ({e.reason})"
        os.unlink(path)
        if state.digests_path and os.path.exists(state.digests_path):
            os.unlink(state.digests_path)
        return done
    found = find_userfaultfds(pid)
    if fd is None:
        if not found:
            return f"process {pid} has no tracking to remove"
        raise UsageError(f"no tracking state saved for process {pid}; its userfaultfds: "
                         f"{', '.join(f'fd {n}' for n in sorted(found))}",
                         hint="name the one ckpt parked with --fd N (it is usually the highest)")
    if fd not in found:
        raise UsageError(f"fd {fd} of process {pid} is not a userfaultfd")
    tracker = UffdWpTracker(pid)
    tracker.parked_fd, tracker.inode = fd, found[fd]
    tracker.stop()
    return f"closed userfaultfd fd {fd} of process {pid}"

