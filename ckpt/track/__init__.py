"""Dirty tracking: which pages a process wrote, with an atomic get-and-clear (DESIGN §2).

Two ways in:

* :func:`open_tracker` — for the dumper: a started (or re-attached) back-end,
  auto-selected in the order uffd-wp, soft-dirty, hash from what ``ckpt check``
  found, or the one asked for.  Follow the *clear, then copy* rule of
  :mod:`ckpt.track.base`.
* :class:`WriteWatch` — the public write-watch API, the seed use case
  (emulating Windows ``GetWriteWatch`` / ``ResetWriteWatch``) on a process or on
  the calling process itself::

      from ckpt.track import WriteWatch

      with WriteWatch(ranges=[(buf_addr, buf_addr + size)]) as ww:   # this process
          ww.reset()
          run_the_code()
          written = ww.get_and_reset()       # GetWriteWatch(WRITE_WATCH_FLAG_RESET)
          for addr in written.pages():
              ...

      with WriteWatch(pid=1234) as ww:       # another process: every writable range
          time.sleep(1)
          print(ww.get_and_reset().written_pages, "pages written in 1 s")

  Leaving the ``with`` block removes every trace of the watch from the target.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import UsageError
from .base import DirtySet, Interval, RangeSpec, Tracker, TrackingLost, TrackingState, VmaDirty, select_ranges

__all__ = [
    "DirtySet", "VmaDirty", "RangeSpec", "TrackingState", "TrackingLost", "Tracker", "select_ranges",
    "choose_method", "open_tracker", "WriteWatch",
]


def choose_method(method: str | None = None, *, own: bool = False) -> str:
    """The back-end to use: ``method`` if it works here, else the best that does (probed once per run).

    For the calling process uffd-wp needs no injection, so only the uffd probe counts.
    Only the cheap probes run (our own memory, no process seized): a pre-dump in
    a slow guest must not pay for the whole ``ckpt check``.
    """
    from ..features import select_tracking, tracking_working

    working = tracking_working()
    if own:
        working |= {"ptrace + syscall injection", "pidfd_getfd"}
    return select_tracking(working, method)


def open_tracker(pid: int | None, method: str | None = None, state: TrackingState | None = None,
                 ranges: RangeSpec | None = None, *, digests_path: str | os.PathLike[str] | None = None) -> Tracker:
    """A running tracker of ``pid`` (None = the calling process).

    With ``state`` (saved by an earlier ``detach()``) tracking is taken over and
    the first ``collect()`` reports the writes since that earlier process's last
    collection; raises :class:`TrackingLost` when the state is gone — fall back
    to a full pre-dump with a warning.  Without it, tracking starts now and the
    first ``collect()`` reports writes since this call.

    Trackers that killed ckpt runs left in the target are closed first
    (:func:`~ckpt.track.uffd_wp.clean_leftovers`); the tracker's ``notes`` say so.
    """
    from .hash import HashTracker
    from .soft_dirty import SoftDirtyTracker
    from .uffd_wp import UffdWpTracker, clean_leftovers

    if state is not None:
        if pid is not None and state.pid != pid:
            raise UsageError(f"tracking state is for process {state.pid}, not {pid}")
        notes = clean_leftovers(state.pid, [(state.parked_fd, state.uffd_inode)] if state.method == "uffd-wp" else ())
        attached: Tracker
        if state.method == "uffd-wp":
            attached = UffdWpTracker.attach(state)
        elif state.method == "hash":
            attached = HashTracker.attach(state)
        elif state.method == "soft-dirty":
            attached = SoftDirtyTracker.attach(state)
        else:
            raise UsageError(f"unknown tracking method {state.method!r} in the saved state")
        attached.notes = notes
        return attached
    notes = clean_leftovers(pid) if pid is not None else []
    chosen = choose_method(method, own=pid is None)
    tracker: Tracker
    if chosen == "uffd-wp":
        tracker = UffdWpTracker(pid)
    elif pid is None:
        raise UsageError(f"watching the calling process needs uffd-wp, not {chosen}")
    elif chosen == "hash":
        tracker = HashTracker(pid, digests_path)
    else:
        tracker = SoftDirtyTracker(pid)
    tracker.start(ranges)
    tracker.notes = notes
    return tracker


class WriteWatch:
    """Watch the pages written in ranges of a process (``pid``) or of the calling process (``pid=None``).

    ``ranges``: ``(start, end)`` address pairs; None = every writable private or
    shared-anonymous mapping, including ones that appear later.  ``method``:
    a back-end name (default: the best that works; the calling process needs uffd-wp).
    """

    def __init__(self, pid: int | None = None, ranges: Sequence[Interval] | None = None,
                 *, method: str | None = None) -> None:
        self.pid = pid
        spec = RangeSpec(None if ranges is None else tuple(sorted((int(s), int(e)) for s, e in ranges)))
        self._tracker: Tracker | None = open_tracker(pid, method, ranges=spec)

    @property
    def method(self) -> str:
        return self._live().method

    def _live(self) -> Tracker:
        if self._tracker is None:
            raise UsageError("this WriteWatch was closed")
        return self._tracker

    def get_and_reset(self) -> DirtySet:
        """Pages written since the last reset, and reset atomically (WRITE_WATCH_FLAG_RESET)."""
        return self._live().collect()

    def get(self) -> DirtySet:
        """Pages written since the last reset, without resetting (uffd-wp only)."""
        return self._live().peek()

    def reset(self) -> None:
        """Forget the pages written so far (ResetWriteWatch)."""
        self._live().collect()

    def close(self) -> None:
        """Stop watching; the target is left as it was.  Idempotent."""
        if self._tracker is not None:
            t, self._tracker = self._tracker, None
            t.stop()

    def __enter__(self) -> "WriteWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
