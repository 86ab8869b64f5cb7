"""Copy-on-write sharing of private memory between a parent and its forked children.

After ``fork()`` a parent and its child map the same physical pages of every
private mapping until one of them writes; a forking server (a pre-fork pool,
redis's BGSAVE child) counts on it.  Two things broke it, measured here (a
parent with 64 MiB of private memory and three forked children, summed Pss
from ``/proc/PID/smaps_rollup``):

* **Reading breaks it.**  ``process_vm_readv`` pins the pages it reads
  (``pin_user_pages_remote``, FOLL_PIN), and since Linux 5.19 pinning an
  anonymous page that is not exclusive to one process makes the kernel copy
  it first (``gup_must_unshare``: an "unshare" fault), so the reader's pin
  cannot see a later write by the other process.  Reading 8 MiB of the shared
  area of the parent grew the tree's Pss by 8 MiB; reading it through
  ``/proc/PID/mem`` (``access_remote_vm``, FOLL_GET, no pin) grew it by
  nothing.  So every dump (``-R``, ``pre-dump`` and migration rounds keep the
  target running) reads a page that ``/proc/PID/pagemap`` does not show as
  exclusively mapped (bit 56, ``PM_MMAP_EXCLUSIVE``) through ``/proc/PID/mem``
  (:func:`not_exclusive`), the rest with ``process_vm_readv`` as before.  No
  injected call of a dump touches the target's memory (they write a scratch
  area of their own), and a full dump without ``--track-mem`` registers no
  userfaultfd, so nothing else write-protects or copies a page.  The trackers
  of a pre-dump read the same way (:class:`ckpt.kernel.cowread.SharingReader`):
  the hash back-end reads every tracked page at each collection, soft-dirty
  (Linux before 6.7) hashes every 2 MiB block of a new VMA at its first; with
  ``process_vm_readv`` a pre-dump of this tree on 6.1 grew its Pss from 66 to
  257 MiB.
* **The image forgot it.**  Each process stored its own copy of every page and
  the restore wrote each into each process: a tree of four came back with four
  times the memory.  Now, in a full dump, a child's private VMA (anonymous,
  heap, stack) equal to one of its parent's (same range, protection, flags and
  VmFlags) records the pages it still shares with it: the same page frame
  number in both pagemaps (root reads PFNs) — :func:`mark_tree`.  The child
  stores none of them (the parent stores them); ``Vma.shared_with_parent``
  lists them, and the image requires the ``cow-shared`` feature so an older
  ckpt refuses it rather than restoring the child without those pages.

Restore.  The tree is not restored by forking the recorded processes: each
helper is made by an injected ``clone3(set_tid=[pid])`` from its parent's
helper (:func:`ckpt.resources.tree.clone_helper`), normally while that one is
still empty.  The least invasive route to the sharing is to keep that clone
and only move it: a parent whose children share pages with it has its memory
mapped and filled *before* it clones them, so each child inherits the filled
mappings through the clone's copy-on-write exactly as fork gave them.  The
child then unmaps what it must not inherit (:func:`unmap_rest`: everything but
its shared VMAs, the trampoline and the kernel's areas), keeps each shared VMA
as it is (:func:`map_vmas <ckpt.resources.memory.map_vmas>` skips it), drops
its pages outside the shared runs (``MADV_DONTNEED``: they read as zero, as a
fresh mapping's, :func:`keep_inherited`), and is filled with its own pages
like any process.  Grandchildren repeat this from their parent.  Rejected:
filling a child by ``mremap`` of pages out of the parent (a private page moved
leaves the parent, it is not shared), and restoring the tree by forking from
the restored processes themselves (it would rewrite how every helper is
made).  Only full dumps record the sharing: a delta's pages are spread over a
chain, and a staged restore (migration) builds its children before any memory
(it refuses such an image, :func:`staged_refusal`).

Bounded: at most :data:`MAX_RUNS` runs per VMA are recorded (the longest);
a child whose writes left more pieces shares those pages only, and stores the
rest.  The self-check (:mod:`ckpt.observed`) compares no Pss or Rss figure
(they vary); the restored layout and VmFlags are compared as for any process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from ..control.inject import Injector
from ..image.pb import mm_pb2
from ..kernel.arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX
from ..kernel.mman import MADV_DONTNEED
from ..kernel.pagemap import READ_CHUNK_PAGES, category_runs, shared_anon
from ..kernel.vm import buffer_address, pread_exact

__all__ = ["FEATURE", "MAX_RUNS", "not_exclusive", "pfns_visible", "mark_tree", "is_inherited", "inherits",
           "shared_pages", "shared_runs", "unmap_rest", "keep_inherited", "staged_refusal"]

#: The inventory feature an image with shared pages requires (:mod:`ckpt.image.compat`).
FEATURE = "cow-shared"
#: Most shared runs recorded per VMA: each gap between two is one injected madvise at restore.
MAX_RUNS = 512

Interval = tuple[int, int]
_Kind = mm_pb2.Vma.Kind
_PRIVATE_ANON = frozenset({_Kind.ANON_PRIVATE, _Kind.HEAP, _Kind.STACK})
#: VmFlags that differ between two processes without saying anything of the pages (dirty tracking).
_TRACKING = frozenset({"sd", "uw"})
#: VmFlags of a VMA fork does not share: not copied (MADV_DONTFORK), wiped in the child (MADV_WIPEONFORK).
_NOT_FORKED = frozenset({"dc", "wf"})

# Byte 7 of a pagemap entry holds bits 56-63: 63 present, 62 swapped, 56 exclusively mapped.
_NOT_PRESENT = bytes(0 if b & 0xC0 == 0x80 else 1 for b in range(256))     # 1: absent or swapped
_LOW7 = bytes(b & 0x7F for b in range(256))  # byte 6 without bit 55 (soft-dirty)
_SAME = bytes(1 if b == 0 else 0 for b in range(256))


def _entries(fd: int, start: int, npages: int, buf: bytearray) -> memoryview:
    view = memoryview(buf)[:npages * 8]
    pread_exact(fd, view, start // PAGE_SIZE * 8, f"pagemap @{start:#x}")
    return view


def _chunks(start: int, end: int) -> Iterable[tuple[int, int]]:
    while start < end:
        n = min(READ_CHUNK_PAGES, (end - start) // PAGE_SIZE)
        yield start, n
        start += n * PAGE_SIZE


# --- dump ---------------------------------------------------------------------------------------

def not_exclusive(pagemap_fd: int, runs: Iterable[Interval]) -> list[Interval]:
    """The parts of ``runs`` whose anonymous pages are present and not mapped by this process alone.

    Those are read through ``/proc/PID/mem``: ``process_vm_readv`` would make the
    kernel copy each (see the module doc; :func:`ckpt.kernel.pagemap.shared_anon`).
    """
    return shared_anon(pagemap_fd, runs)


def pfns_visible() -> bool:
    """True when this process reads page frame numbers from pagemap (CAP_SYS_ADMIN); else they read as 0."""
    page = bytearray(PAGE_SIZE)
    page[0] = 1  # present now
    addr = buffer_address(page)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        entry = int.from_bytes(os.pread(fd, 8, addr // PAGE_SIZE * 8), "little")
    finally:
        os.close(fd)
    return bool(entry & ((1 << 55) - 1))


def shared_pages(fd_a: int, fd_b: int, start: int, end: int) -> list[Interval]:
    """Runs of ``[start, end)`` where two processes map the same present page frame (pagemap fds of each)."""
    out: list[Interval] = []
    n0 = min(READ_CHUNK_PAGES, (end - start) // PAGE_SIZE)
    buf_a, buf_b = bytearray(n0 * 8), bytearray(n0 * 8)
    for pos, n in _chunks(start, end):
        a, b = _entries(fd_a, pos, n, buf_a), _entries(fd_b, pos, n, buf_b)
        miss = (int.from_bytes(a[7::8].tobytes().translate(_NOT_PRESENT), "little")
                | int.from_bytes(b[7::8].tobytes().translate(_NOT_PRESENT), "little"))
        for j in range(7):  # bytes 0-6: the frame number (bits 0-54)
            ca, cb = a[j::8].tobytes(), b[j::8].tobytes()
            if j == 6:
                ca, cb = ca.translate(_LOW7), cb.translate(_LOW7)
            miss |= int.from_bytes(ca, "little") ^ int.from_bytes(cb, "little")
        same = miss.to_bytes(n, "little").translate(_SAME)
        if same.count(1):
            out.extend((s, e) for s, e, _ in category_runs(same, pos, skip=0))
    return _joined(out)


def _joined(runs: Sequence[Interval]) -> list[Interval]:
    out: list[list[int]] = []
    for s, e in runs:
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _fork_key(v: mm_pb2.Vma) -> tuple:
    return (v.start, v.end, v.prot, v.flags, v.kind, v.name, frozenset(v.vm_flags.split()) - _TRACKING)


def mark_tree(parent_of: Mapping[int, int], vmas_of: Mapping[int, Sequence[mm_pb2.Vma]]) -> int:
    """Record in each child's VMAs the pages it shares with its parent's equal VMA; the pages recorded.

    ``parent_of``: {child pid: parent pid} of the processes of the tree (frozen).
    Sets ``Vma.shared_with_parent`` (at most :data:`MAX_RUNS` runs, the longest).
    Nothing is recorded where page frame numbers cannot be read (not root).
    """
    if not any(p in vmas_of for p in parent_of.values()) or not pfns_visible():
        return 0
    total = 0
    fds: dict[int, int] = {}

    def fd_of(pid: int) -> int:
        if pid not in fds:
            fds[pid] = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        return fds[pid]

    try:
        for child, parent in parent_of.items():
            if parent not in vmas_of or child not in vmas_of:
                continue
            theirs = {_fork_key(v) for v in vmas_of[parent]
                      if v.kind in _PRIVATE_ANON and not _NOT_FORKED & set(v.vm_flags.split())}
            for v in vmas_of[child]:
                if v.kind not in _PRIVATE_ANON or _fork_key(v) not in theirs:
                    continue
                runs = shared_pages(fd_of(parent), fd_of(child), v.start, v.end)
                if len(runs) > MAX_RUNS:
                    runs = sorted(sorted(runs, key=lambda r: r[0] - r[1])[:MAX_RUNS])
                del v.shared_with_parent[:]
                for s, e in runs:
                    v.shared_with_parent.add(start=s, end=e)
                    total += (e - s) // PAGE_SIZE
    finally:
        for fd in fds.values():
            os.close(fd)
    return total


def shared_runs(v: mm_pb2.Vma) -> list[Interval]:
    """The recorded runs of ``v`` shared with the parent, in address order."""
    return [(r.start, r.end) for r in v.shared_with_parent]


# --- restore ------------------------------------------------------------------------------------

def is_inherited(v: mm_pb2.Vma) -> bool:
    """A VMA the restored process inherits from its parent's helper (it shares pages with it)."""
    return len(v.shared_with_parent) > 0


def inherits(vmas: Iterable[mm_pb2.Vma]) -> bool:
    """Whether a process has a VMA to inherit: its parent fills its memory before cloning it."""
    return any(is_inherited(v) for v in vmas)


def unmap_rest(inj: Injector, vmas: Sequence[mm_pb2.Vma], keep: Iterable[Interval]) -> None:
    """In a helper cloned from a filled parent: unmap all but its inherited VMAs and ``keep``
    (the trampoline, the kernel's areas)."""
    ranges = sorted([*keep, *((v.start, v.end) for v in vmas if is_inherited(v))])
    addr = 0
    for s, e in [*ranges, (TASK_SIZE_MAX, TASK_SIZE_MAX)]:
        if s > addr:
            inj.munmap(addr, s - addr)
        addr = max(addr, e)


def keep_inherited(inj: Injector, v: mm_pb2.Vma) -> None:
    """The inherited VMA ``v`` keeps the parent's pages in its shared runs only: the rest is dropped
    (reads as zero, as a fresh mapping; the process's own pages are written there afterwards)."""
    pos = v.start
    for s, e in [*shared_runs(v), (v.end, v.end)]:
        if s > pos:
            inj.madvise(pos, s - pos, MADV_DONTNEED)
        pos = max(pos, e)


def staged_refusal(pid: int, vmas: Iterable[mm_pb2.Vma]) -> str | None:
    """Why a staged restore (its helpers are cloned before any memory) cannot take these VMAs; None if it can."""
    if inherits(vmas):
        return (f"process {pid} shares pages with its parent in the image (copy-on-write), which only a plain "
                "restore recreates")
    return None
