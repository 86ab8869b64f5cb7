"""Guard regions (``madvise(MADV_GUARD_INSTALL)``, Linux 6.13): pages that fault on any access.

A guard is a marker in a page table entry, not a VMA of its own: the mapping around it stays one VMA
(smaps shows nothing), and ``/proc/PID/mem`` and process_vm_readv fail there (EIO, EFAULT).  PAGEMAP_SCAN
reports the markers as ``PAGE_IS_GUARD`` (Linux 6.15; before it they look like swapped pages), so the
dump asks for them with one scan per process (:func:`dump`), records them in their VMA
(``Vma.guards``), stores none of their pages (:func:`readable_runs`), and the restore installs them again
once the pages are written (:func:`install`).  The self-check compares them too (:func:`observed_lines`).
A kernel that has guard regions but cannot report them (6.13, 6.14) fails such a dump with a named
reason (the EIO of their pages, see :func:`ckpt.resources.memory.dump_pages_delta`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

from ..control.inject import Injector
from ..errors import RestoreError
from ..image.pb import mm_pb2
from ..kernel.mman import MADV_GUARD_INSTALL
from ..kernel.pagemap import PAGE_IS_GUARD, pagemap_scan

__all__ = ["FEATURE", "scan_reports_guards", "dump", "guard_runs", "readable_runs", "install", "observed_lines"]


#: The image feature (ckpt.image.compat) of an image with guard regions.
FEATURE = "guard-regions"


@functools.cache
def scan_reports_guards() -> bool:
    """PAGEMAP_SCAN knows PAGE_IS_GUARD (Linux 6.15); EINVAL for an unknown category before it."""
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            list(pagemap_scan(f.fileno(), 0, 1 << 21, category_mask=PAGE_IS_GUARD, return_mask=PAGE_IS_GUARD))
        return True
    except OSError:
        return False


def _scan(pid: int, start: int, end: int) -> list[tuple[int, int]]:
    """The guarded runs of ``pid`` in ``[start, end)``; none where the kernel cannot say."""
    if not scan_reports_guards() or start >= end:
        return []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return [(r.start, r.end) for r in pagemap_scan(fd, start, end, category_mask=PAGE_IS_GUARD,
                                                        return_mask=PAGE_IS_GUARD)]
    finally:
        os.close(fd)


def dump(pid: int, vmas: Sequence[mm_pb2.Vma], special: Iterable[int]) -> None:
    """Record in each of ``vmas`` (address order) the guard regions inside it; kinds in ``special`` skipped."""
    mapped = [v for v in vmas if v.kind not in special]
    if not mapped:
        return
    runs = _scan(pid, mapped[0].start, mapped[-1].end)
    i = 0
    for v in mapped:
        while i < len(runs) and runs[i][1] <= v.start:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < v.end:
            v.guards.extend((max(runs[j][0], v.start), min(runs[j][1], v.end)))
            j += 1


def guard_runs(v: mm_pb2.Vma) -> list[tuple[int, int]]:
    """The (start, end) guard runs recorded in ``v``."""
    g = v.guards
    return [(g[k], g[k + 1]) for k in range(0, len(g) - 1, 2)]


def readable_runs(v: mm_pb2.Vma, runs: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
    """``runs`` (start, end, zero) of ``v`` without its guard pages (the scan lists them as swapped)."""
    if not v.guards:
        return runs
    out = []
    for s, e, z in runs:
        pos = s
        for gs, ge in guard_runs(v):
            if ge <= pos or gs >= e:
                continue
            if gs > pos:
                out.append((pos, gs, z))
            pos = max(pos, ge)
        if pos < e:
            out.append((pos, e, z))
    return out


def install(inj: Injector, vmas: Iterable[mm_pb2.Vma]) -> int:
    """madvise(MADV_GUARD_INSTALL) over every guard run of ``vmas`` (clipped to each: a staged restore
    maps pieces of a VMA); after their pages are written.  Returns the runs installed."""
    n = 0
    for v in vmas:
        for s, e in guard_runs(v):
            s, e = max(s, v.start), min(e, v.end)
            if s >= e:
                continue
            try:
                inj.madvise(s, e - s, MADV_GUARD_INSTALL)
            except OSError as exc:
                raise RestoreError(f"cannot install the guard region {s:#x}-{e:#x} again: {exc.strerror}",
                                   hint="guard regions need Linux 6.13 or later") from exc
            n += 1
    return n


def observed_lines(pid: int) -> list[tuple[str, str]]:
    """The guard runs of ``pid`` as the self-check's lines ("start-end", "guard"); none where the kernel
    cannot report them."""
    return [(f"{s:x}-{e:x}", "guard") for s, e in _scan(pid, 0, 1 << 47)]
