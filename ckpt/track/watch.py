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
from ..procfs.task import read_starttime
from . import RangeSpec, TrackingLost, open_tracker
from .base import (
    STATE_DIR_DEFAULT, TrackingState, format_ranges, load_tracking_state, tracking_state_path, tracking_states,
)
from .uffd_wp import UffdWpTracker, _parked_inode, clean_leftovers, find_userfaultfds

__all__ = ["WatchRange", "WatchSample", "watch", "track_start", "track_stop", "tracking_state_path", "tracking_states",
           "STATE_DIR_DEFAULT"]


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
          method: str | None = None, notes: list[str] | None = None) -> Iterator[WatchSample]:
    """Track ``pid`` and yield, every ``interval`` seconds, the pages written per range and the dirty rate.

    The rate counts written pages (the bytes a migration would have to send
    again); new ranges count in full.  Closing the generator — or Ctrl-C while
    it sleeps — stops tracking and removes it from the target.  Wrap it in
    ``contextlib.closing`` when breaking out early.  ``notes`` gets what was mended on the
    way in (trackers killed ckpt runs left in the target), before the first sample.
    """
    if interval <= 0:
        raise UsageError(f"--interval must be positive, not {interval}")
    tracker = open_tracker(pid, method, ranges=RangeSpec(ranges, tuple(exclude)))
    if notes is not None:
        notes.extend(tracker.notes)
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


def _still_parked(state: TrackingState) -> bool:
    """Whether the tracker a state file names is still in place (uffd-wp: the fd and inode; hash: the digests;
    soft-dirty: its bits live in the page tables as long as the process does)."""
    if state.method == "uffd-wp":
        return state.parked_fd >= 0 and _parked_inode(state.pid, state.parked_fd) == state.uffd_inode
    if state.method == "soft-dirty":
        return True
    return bool(state.digests_path) and os.path.exists(state.digests_path)


def _describe(state: TrackingState) -> str:
    where = {"uffd-wp": f"userfaultfd parked at fd {state.parked_fd}",
             "soft-dirty": "bits in the page tables"}.get(state.method, state.digests_path)
    return f"{state.method}, {where}, ranges {format_ranges(state.ranges)}"


def track_start(pid: int, *, method: str | None = None, ranges: "tuple[tuple[int, int], ...] | None" = None,
                exclude: "tuple[tuple[int, int], ...]" = (), notes: list[str] | None = None) -> TrackingState:
    """Start tracking ``pid`` and leave it running (parked) for later ``ckpt`` processes; saves the state file.

    A process already tracked (``track --start`` or a pre-dump left its tracker, and it is
    still in place) keeps that tracker when the same method and ranges are asked for —
    never a second one — and the state is returned unchanged (a note says so); asking
    for another method or other ranges is refused: stop the first one before.
    ``notes`` collects what was noticed (leftovers of killed runs closed, the kept tracker).
    """
    notes = notes if notes is not None else []
    want = RangeSpec(None if ranges is None else tuple(sorted(ranges)), tuple(sorted(exclude)))
    path = tracking_state_path(pid)
    existing = load_tracking_state(pid, read_starttime(pid))
    if existing is not None and _still_parked(existing):
        notes.extend(clean_leftovers(pid))
        if method not in (None, existing.method) or existing.ranges != want:
            raise UsageError(f"process {pid} is already tracked ({_describe(existing)})",
                             hint=f"`ckpt track --stop -t {pid}` ends it; then start the one you want")
        notes.append(f"process {pid} was already tracked ({_describe(existing)}): kept that tracker")
        return existing
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digests = os.path.join(os.path.dirname(path), f"digests-{pid}.img")
    tracker = open_tracker(pid, method, ranges=want, digests_path=digests)
    notes.extend(tracker.notes)
    state = tracker.detach()
    state.save(path)
    return state


def track_stop(pid: int, *, fd: int | None = None) -> str:
    """Remove tracking left in ``pid``; returns what was done.

    The tracker is identified by the state file ``track --start`` (or a
    pre-dump) saved: its fd number *and* the userfaultfd's inode.  Every other
    tracker ckpt parked there (:func:`~ckpt.track.uffd_wp.parked_userfaultfds`:
    killed runs' leftovers) is closed too.  A userfaultfd without ckpt's mark (one
    the program uses itself, or parked by a ckpt from before the mark) is closed
    only when named with ``fd``, after checking it is a userfaultfd.
    """
    path = tracking_state_path(pid)
    done: list[str] = []
    if os.path.exists(path):
        state = TrackingState.load(path)
        try:
            open_tracker(pid, state=state).stop()
            done.append(f"stopped {state.method} tracking of process {pid}")
        except TrackingLost as e:
            done.append(f"tracking of process {pid} was already gone ({e.reason})")
        os.unlink(path)
        if state.digests_path and os.path.exists(state.digests_path):
            os.unlink(state.digests_path)
    done += clean_leftovers(pid)
    found = find_userfaultfds(pid)
    if fd is not None and fd not in found:
        if not done:  # (else it was the tracker just stopped)
            raise UsageError(f"fd {fd} of process {pid} is not a userfaultfd")
    elif fd is not None:
        tracker = UffdWpTracker(pid)
        tracker.parked_fd, tracker.inode = fd, found[fd]
        tracker.stop()
        done.append(f"closed userfaultfd fd {fd} of process {pid}")
    elif not done and found:
        raise UsageError(f"no tracking state saved for process {pid}, and none of its userfaultfds "
                         f"({', '.join(f'fd {n}' for n in sorted(found))}) carries ckpt's mark",
                         hint="if ckpt parked one (a ckpt from before the mark), name it with --fd N "
                              "(it is usually the highest)")
    return "; ".join(done) or f"process {pid} has no tracking to remove"
