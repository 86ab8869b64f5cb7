"""soft-dirty: ``/proc/PID/clear_refs`` "4" + the soft-dirty bit, for kernels with CONFIG_MEM_SOFT_DIRTY.

WEAKNESS (the reason uffd-wp exists, DESIGN §1–2): the *clear* is
whole-process — writing "4" to clear_refs resets the bit on every page of the
target, selected or not — and it is a separate step from the *get*.  A write
between reading the bits and clearing them would be lost, so each collection
freezes the target for the get and the clear together: the target stops for
the whole scan, which uffd-wp never needs.  Two trackers on one process would
clear each other's bits.

Also: a page zapped with MADV_DONTNEED after a clear has no pte left to carry
the bit, so non-present, non-swapped pages are reported as holes on every
collection (their content is what the backing gives: zero for anonymous
memory).  New VMAs carry VM_SOFTDIRTY, so every page of one reports dirty
even in a process that did not see the previous collection.

Not usable on these machines (no CONFIG_MEM_SOFT_DIRTY): :func:`ckpt.track.open_tracker`
selects it only when ``ckpt check``'s soft-dirty probe passed.  The kernel side
is behind :class:`SoftDirtyKernel` so the shared logic is unit-tested with a fake.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ..errors import CkptError, translate_oserror
from ..kernel import pagemap as pm
from ..kernel.arch_x86_64 import PAGE_SIZE
from ..procfs.maps import Vma, read_maps
from ..procfs.task import read_starttime
from .base import DirtySet, RangeSpec, Run, Tracker, TrackingState, VmaDirty, merge_runs, select_ranges, subtract_intervals

__all__ = ["SoftDirtyKernel", "ProcSoftDirty", "SoftDirtyTracker", "CLEAR_REFS_SOFT_DIRTY"]

#: Written to /proc/PID/clear_refs: clear the soft-dirty bits of every pte (Documentation/admin-guide/mm/soft-dirty.rst).
CLEAR_REFS_SOFT_DIRTY = "4"
_RETURN = pm.PAGE_IS_SOFT_DIRTY | pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED


class SoftDirtyKernel(Protocol):
    """The four kernel operations the tracker needs; the seam a test replaces."""

    def read_maps(self, pid: int) -> Sequence[Vma]: ...
    def frozen(self, pid: int) -> AbstractContextManager[object]: ...
    def scan(self, pid: int, start: int, end: int) -> Sequence[pm.PageRegion]: ...
    def clear_refs(self, pid: int) -> None: ...


class ProcSoftDirty:
    """The real kernel: freeze with ptrace, PAGEMAP_SCAN for SOFT_DIRTY, clear_refs."""

    def read_maps(self, pid: int) -> Sequence[Vma]:
        return read_maps(pid)

    def frozen(self, pid: int) -> AbstractContextManager[object]:
        from ..control.seize import freeze
        return freeze(pid)

    def scan(self, pid: int, start: int, end: int) -> Sequence[pm.PageRegion]:
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:  # no category filter: every page, classified by the caller
            return list(pm.pagemap_scan(fd, start, end, return_mask=_RETURN))
        finally:
            os.close(fd)

    def clear_refs(self, pid: int) -> None:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write(CLEAR_REFS_SOFT_DIRTY)


class SoftDirtyTracker(Tracker):
    """Tracks ``pid`` with soft-dirty bits; ``kernel`` defaults to the real one."""

    method = "soft-dirty"

    def __init__(self, pid: int, kernel: SoftDirtyKernel | None = None) -> None:
        super().__init__(pid)
        self.kernel: SoftDirtyKernel = kernel or ProcSoftDirty()
        self.start_time = read_starttime(pid) if kernel is None else 0
        self._running = False

    def start(self, ranges: RangeSpec | None = None) -> None:
        self.ranges = ranges or RangeSpec()
        self._running = True
        self.collect()

    @classmethod
    def attach(cls, state: TrackingState, kernel: SoftDirtyKernel | None = None) -> "SoftDirtyTracker":
        """The bits live in the target's page tables: nothing to re-open."""
        self = cls(state.pid, kernel)
        self.ranges = state.ranges
        self._running = True
        return self

    def collect(self) -> DirtySet:
        if not self._running:
            raise CkptError(f"tracking of process {self.pid} is not running")
        try:
            with self.kernel.frozen(self.pid):
                selected = select_ranges(self.kernel.read_maps(self.pid), self.ranges.include, self.ranges.exclude)
                t0 = time.perf_counter()
                found = [self._one(s, e, v) for (s, e), v in selected]
                self.kernel.clear_refs(self.pid)  # whole process, after every get: still frozen
                elapsed = time.perf_counter() - t0
        except OSError as e:
            raise translate_oserror(e, self.pid, "collecting soft-dirty bits of") from e
        gone = self._previous.gone([r for r, _ in selected])
        return DirtySet(self.method, tuple(found), gone, elapsed, time.monotonic())

    def _one(self, start: int, end: int, vma: Vma) -> VmaDirty:
        new = not any(s <= start and end <= e for s, e in self._previous.ranges)
        written: list[Run] = []
        holes: list[Run] = []
        for r in self.kernel.scan(self.pid, start, end):
            if not r.categories & (pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED):
                holes.append((r.start, r.npages))
            elif new or r.categories & pm.PAGE_IS_SOFT_DIRTY:
                written.append((r.start, r.npages))
        if new:  # wholly dirty: everything that is not a hole
            written = [(s, (e - s) // PAGE_SIZE) for s, e in
                       subtract_intervals((start, end), [(h, h + n * PAGE_SIZE) for h, n in holes]) if e > s]
        return VmaDirty(start, end, vma.path, merge_runs(written), merge_runs(holes), new=new)

    def state(self) -> TrackingState:
        return TrackingState(self.method, self.pid, self.start_time, include=self.ranges.include,
                             exclude=self.ranges.exclude)

    def detach(self) -> TrackingState:
        self._running = False
        return self.state()

    def stop(self) -> None:
        self._running = False

