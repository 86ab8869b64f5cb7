"""The documented Python API of ckpt; the CLI and the tests call only this.

Every function raises :class:`ckpt.errors.CkptError` subclasses for anything a
user can cause (no such process, corrupt image, unsupported resource).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .features import Features, probe_features

if TYPE_CHECKING:
    from .dump import DumpStats, RestoreStats
    from .image.verify import Report

__all__ = ["check", "show", "verify", "dump", "restore", "wait_restored", "DumpStats", "RestoreStats"]


def check() -> Features:
    """Probe every kernel facility ckpt relies on (cached for this process)."""
    return probe_features()


def show(image_dir: str | os.PathLike[str], *, as_json: bool = False) -> str:
    """Decode every file of an image directory to text (or JSON), like ``crit show``."""
    from .image.show import show as _show

    return _show(image_dir, as_json=as_json)


def verify(image_dir: str | os.PathLike[str]) -> "Report":
    """Check every file of an image and its whole parent chain; the report lists every problem."""
    from .image.verify import verify as _verify

    return _verify(image_dir)


def dump(pid: int, image_dir: str | os.PathLike[str], *, leave_running: bool = False,
         compress_level: int | None = 1) -> "DumpStats":
    """Checkpoint process ``pid`` into the new directory ``image_dir``.

    The process is ended after a successful dump (as CRIU does) unless
    ``leave_running``.  On any failure it keeps running exactly as before and
    no image is left behind.
    """
    from .dump import dump as _dump

    return _dump(pid, image_dir, leave_running=leave_running, compress_level=compress_level)


def restore(image_dir: str | os.PathLike[str], *, detached: bool = False,
            pidfile: str | os.PathLike[str] | None = None) -> "RestoreStats":
    """Recreate the process saved in ``image_dir`` with its pid and tids; it runs on return.

    Not ``detached``: the caller is its parent and should :func:`wait_restored`.
    """
    from .restore import restore as _restore

    return _restore(image_dir, detached=detached, pidfile=pidfile)


def wait_restored(pid: int) -> int:
    """Wait for a restored (not detached) process; its exit status as a shell reports it."""
    from .restore import wait_restored as _wait

    return _wait(pid)


# --- dirty tracking and write-watch (ckpt.track) -------------------------------------------

import time as _time
from collections.abc import Iterator as _Iterator
from dataclasses import dataclass as _dataclass

__all__ += ["WatchRange", "WatchSample", "watch", "track_start", "track_stop", "tracking_state_path"]

#: Where ``ckpt track --start`` keeps the state a later ``ckpt`` needs (override: $CKPT_STATE_DIR).
STATE_DIR_DEFAULT = "/run/ckpt"


@_dataclass(frozen=True)
class WatchRange:
    """One tracked range in one interval of :func:`watch`."""

    start: int
    end: int
    path: str
    written_pages: int
    hole_pages: int
    new: bool
    mb_s: float


@_dataclass(frozen=True)
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
          method: str | None = None) -> _Iterator[WatchSample]:
    """Track ``pid`` and yield, every ``interval`` seconds, the pages written per range and the dirty rate.

    The rate counts written pages (the bytes a migration would have to send
    again); new ranges count in full.  Closing the generator — or Ctrl-C while
    it sleeps — stops tracking and removes it from the target.  Wrap it in
    ``contextlib.closing`` when breaking out early.
    """
    from .kernel.arch_x86_64 import PAGE_SIZE
    from .track import RangeSpec, open_tracker

    if interval <= 0:
        from .errors import UsageError
        raise UsageError(f"--interval must be positive, not {interval}")
    tracker = open_tracker(pid, method, ranges=RangeSpec(ranges, tuple(exclude)))
    try:
        last = _time.monotonic()
        n = 0
        while count is None or n < count:
            _time.sleep(max(0.0, last + interval - _time.monotonic()))
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


def track_start(pid: int, *, method: str | None = None, ranges: "tuple[tuple[int, int], ...] | None" = None,
                exclude: "tuple[tuple[int, int], ...]" = ()) -> "TrackingState":
    """Start tracking ``pid`` and leave it running (parked) for later ``ckpt`` processes; saves the state file."""
    from .track import RangeSpec, open_tracker

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
    from .errors import UsageError
    from .track import TrackingLost, open_tracker
    from .track.base import TrackingState
    from .track.uffd_wp import UffdWpTracker, find_userfaultfds

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


if TYPE_CHECKING:
    from .track.base import TrackingState
