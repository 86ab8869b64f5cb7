"""The address space of a process: its VMAs, the mm_struct fields and the page contents.

Dump (target frozen):

* every VMA of ``/proc/PID/smaps`` becomes a ``Vma`` record with the mmap flags
  that recreate it and, for a file, the file's identity (path, size, mtime,
  build-id: :mod:`ckpt.resources.fileid`) taken through ``/proc/PID/map_files``
  — the file really mapped, not whatever the path names now;
* page contents go into the pid's PageWriter, VMA by VMA in address order.
  PAGEMAP_SCAN (or, before Linux 6.7, batched pagemap reads) tells which pages exist: pages never touched (neither present
  nor swapped) are not stored; the shared zero page is stored as ZERO; in a
  private file mapping only pages that are no longer file pages (written, so
  anonymous copies) are stored — the rest comes from the file on restore.
  ``[vdso]``/``[vvar]``/``[vvar_vclock]``/``[vsyscall]`` are never stored.
* pages are read with ``process_vm_readv`` straight into the image writer's
  chunk buffers, reused for the whole dump (fresh destination memory is
  slower, DESIGN §3: each is faulted in once, by its first read);
  PROT_NONE and exec-only areas through ``/proc/PID/mem`` (process_vm_readv
  gives EFAULT there), and so are pages shared with another process since
  fork when the process runs on (process_vm_readv would copy them) — and a
  child's pages still shared with its parent are not stored at all
  (:mod:`ckpt.resources.cow`).

Restore (helper stopped, its own mappings gone, DESIGN §4): :func:`check_files`
refuses changed files before anything is created (a mapped file's pages that
were not saved come from the file: only a copy whose build-id and size vouch
for its bytes is taken, and that only with ``--allow-changed-files``), :func:`move_vdso` puts the
vDSO and vvar pages where the image had them, :func:`map_vmas` recreates every
VMA with MAP_FIXED and its final backing and protection, :func:`fill_pages`
streams the pages chunk by chunk from the image (``process_vm_writev`` where
writable, ``/proc/PID/mem`` elsewhere), and :func:`set_mm_map` sets the
mm_struct fields and the exe link with ``prctl(PR_SET_MM, PR_SET_MM_MAP)``.

Restore in stages (:class:`ckpt.restore.StagedRestore`, for migration): the
layout of one image is mapped and filled, then brought to the next image's:
:func:`diff_layout` says which ranges stay mapped as they are, which go, and
which pieces are mapped afresh; the pages that stay need only the newer
image's HERE pages written, its ZERO pages and the pages it no longer has
reset (:func:`reset_pages`), and the new pieces a full fill from the chain
(:func:`fill_pages` with ``sources`` clipped to them by :func:`clip_sources`).
"""

from __future__ import annotations

import bisect
import collections
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

from ..control.inject import Injector, Query, Scratch

from ..errors import CkptError, RestoreError, Unsupported
from ..image.chain import chain_chunk_jobs, resolve_pages
from ..image.pb import common_pb2, mm_pb2
from ..image.reader import ChunkReader, Image
from ..image.records import PageSource, PageState
from ..image.store import PageWriter
from ..kernel.arch_x86_64 import NR, PAGE_SIZE, TASK_SIZE_MAX
from ..kernel.mman import (
    MADV_DONTNEED, MADV_DONTNEED_LOCKED,
    MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, MREMAP_FIXED,
    MREMAP_MAYMOVE, PROT_READ, PROT_WRITE,
)
from ..features import pagemap_scan_works, zero_pfns
from ..kernel.pagemap import (
    PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, READ_CHUNK_PAGES, pagemap_scan, read_regions,
)
from ..kernel.prctl import PR_SET_MM
from ..kernel.task_abi import PR_SET_MM_MAP, prctl_mm_map
from ..kernel.vm import ProcMem, buffer_address, process_vm_readv, process_vm_writev
from ..procfs.maps import Vma as ProcVma, read_maps
from ..procfs.snapshot import Snapshot
from ..track.base import subtract_sorted
from . import aio, cow, crosscheck, fileid, ghost, guards, hugetlb, memfd, shmfile, sysvshm, vmflags

__all__ = [
    "Kind", "SPECIAL_KINDS", "UNSTORED_KINDS", "PageStats", "classify", "file_identity", "map_files_path",
    "dump_vmas", "dump_mm", "dump_pages", "check_files", "special_vmas", "move_vdso", "map_vmas",
    "fill_pages", "PageFiller", "set_mm_map", "free_area",
    "LayoutDiff", "diff_layout", "merge_intervals", "intersect", "subtract", "clip_sources", "reset_pages",
]

class _Kinds:
    """``mm_pb2.Vma.Kind`` with its values as plain attributes: the protobuf wrapper looks each one up
    in Python, and a dump of 30,000 VMAs asks hundreds of thousands of times."""

    def __init__(self, wrapper) -> None:  # noqa: ANN001 - protobuf's EnumTypeWrapper
        self.Name, self.Value = wrapper.Name, wrapper.Value
        for name, number in wrapper.items():
            setattr(self, name, number)

    def __getattr__(self, name: str) -> int:  # only for a name the enum does not have: the same error
        raise AttributeError(f"Vma.Kind has no value {name}")


Kind: Any = _Kinds(mm_pb2.Vma.Kind)
#: Areas the kernel installs: never stored, never mapped by us.
SPECIAL_KINDS = frozenset({Kind.VDSO, Kind.VVAR, Kind.VVAR_VCLOCK, Kind.VSYSCALL})
# The kind sets tested in loops over VMAs, once: each ``Kind.X`` goes through the protobuf enum
# wrapper's __getattr__ (~0.4 µs here), and a restore made hundreds of them per process.
_FILE_KINDS = frozenset({Kind.FILE_PRIVATE, Kind.FILE_SHARED})
_ANON_KINDS = frozenset({Kind.ANON_PRIVATE, Kind.ANON_SHARED, Kind.HEAP, Kind.STACK})
_KERNEL_AREAS = frozenset({Kind.VDSO, Kind.VVAR, Kind.VVAR_VCLOCK})
#: VMAs whose pages no dump stores: the kernel's own, and shared file mappings (the file holds them).
UNSTORED_KINDS = SPECIAL_KINDS | {Kind.FILE_SHARED, Kind.SYSV_SHM, Kind.AIO_RING}
_SPECIAL_NAMES = {"[vdso]": Kind.VDSO, "[vvar]": Kind.VVAR, "[vvar_vclock]": Kind.VVAR_VCLOCK,
                  "[vsyscall]": Kind.VSYSCALL}
_AT_FDCWD = -100
#: Threads that restore page data, each decompressing and writing whole chunks: one per core here.
FILL_THREADS = min(4, os.cpu_count() or 2)


# ---------------------------------------------------------------------------
# dump
# ---------------------------------------------------------------------------


def classify(vma: ProcVma) -> int:
    """The Vma.Kind of one mapping (with its VmFlags); Unsupported for what restore cannot recreate yet."""
    name = vma.path
    if name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[name]
    if name == "[uprobes]":
        raise Unsupported(f"mapping {vma.start:#x}-{vma.end:#x} is [uprobes] (a uprobe is attached to the target)")
    if "io" in vma.vmflags or "pf" in vma.vmflags:
        raise Unsupported(f"mapping {vma.start:#x}-{vma.end:#x} ({name or 'anonymous'}) is device memory (VM_IO/"
                          "VM_PFNMAP): its contents are the device's, which a restore cannot give back")
    if "ht" in vma.vmflags and name == hugetlb.ANON_NAME:  # MAP_HUGETLB: a file of the kernel's own hugetlbfs
        return Kind.ANON_SHARED if vma.shared else Kind.ANON_PRIVATE
    if name.startswith("/SYSV"):
        return Kind.SYSV_SHM  # before the inode test: the inode is the shmid, and shmid 0 exists
    if vma.inode == 0 or name.startswith("[anon"):
        if vma.shared:
            return Kind.ANON_SHARED
        if name == "[heap]":
            return Kind.HEAP
        if vma.is_stack:
            return Kind.STACK
        return Kind.ANON_PRIVATE
    if vma.shared and vma.deleted and name == "/dev/zero":
        return Kind.ANON_SHARED  # MAP_SHARED|MAP_ANONYMOUS shows as the shmem file "/dev/zero (deleted)"
    if name.startswith(memfd.PREFIX):
        return Kind.FILE_SHARED if vma.shared else Kind.FILE_PRIVATE  # the file: the memfd object (content_owner)
    if vma.deleted and name == aio.NAME:
        return Kind.AIO_RING  # made again by io_setup (resources.aio); its header is read by dump_mm
    # A deleted file ("PATH (deleted)"): a file mapping all the same, of the ghost the restore makes again
    # (dump_vmas records it, refusing an inode that cannot be made again).
    if not name.startswith("/"):
        raise Unsupported(f"mapping {vma.start:#x}-{vma.end:#x} has a backing ckpt does not know: {name!r}")
    return Kind.FILE_SHARED if vma.shared else Kind.FILE_PRIVATE


def file_identity(path: str, name: str) -> common_pb2.FileIdentity:
    """The identity of the file ``path`` opens (a /proc link), known to the program as ``name``.

    A file we may not read (an exec-only program, ckpt not root) has no build-id recorded: it is checked
    by size and mtime."""
    try:
        return fileid.identity(*fileid.BUILD_IDS.of_path(path, name))
    except PermissionError:
        return fileid.identity(os.stat(path))


def dump_vmas(pid: int, snap: Snapshot, deleted_max: int = ghost.DELETED_MAX) -> list[mm_pb2.Vma]:
    """One Vma record per mapping, address order; raises Unsupported for unknown backings.

    A mapping of a deleted file records its ghost (:mod:`ckpt.resources.ghost`; more data than
    ``deleted_max`` is refused), whose bytes the dump stores once, by its owner.
    """
    out: list[mm_pb2.Vma] = []
    ghosts: dict[tuple[int, int, int], common_pb2.Ghost] = {}
    shm_files: dict[tuple[int, int, int], common_pb2.Ghost | None] = {}  # None: not on a tmpfs
    segments: dict | None = None
    # A file is mapped in several VMAs (a library: 4-5): look at it once, by the (dev, inode) maps shows.
    idents: dict[tuple[int, int, int], common_pb2.FileIdentity] = {}
    # (mmap flags, VmFlags text) by (VmFlags, shared, anonymous): a handful of distinct ones in 30,000 VMAs.
    seen: dict[tuple[frozenset[str], bool, bool], tuple[int, str]] = {}
    for vma in snap.vmas:
        kind = classify(vma)
        key = (vma.vmflags, vma.shared, kind in _ANON_KINDS)
        got = seen.get(key)
        if got is None:
            flags = MAP_SHARED if vma.shared else MAP_PRIVATE
            if kind in _ANON_KINDS:
                flags |= MAP_ANONYMOUS
            if "gd" in vma.vmflags:
                flags |= MAP_GROWSDOWN
            if "nr" in vma.vmflags:
                flags |= MAP_NORESERVE
            got = seen[key] = (vmflags.map_type(vma.vmflags, flags), " ".join(sorted(vma.vmflags)))
        flags, letters = got
        if "ht" in vma.vmflags:  # its huge page size, as mmap takes it (memfd_create too, see memfd.open_in)
            flags |= hugetlb.map_flags(hugetlb.page_size_of(snap, vma.start))
        rec = mm_pb2.Vma(start=vma.start, end=vma.end, prot=vma.prot, flags=flags, kind=kind, name=vma.path,
                         pgoff=vma.offset, vm_flags=letters)
        if kind in _FILE_KINDS:
            key = (vma.dev_major, vma.dev_minor, vma.inode)
            ident = idents.get(key)
            if ident is None:
                link = f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}"
                try:  # a memfd's or a deleted file's bytes travel in the image: no build-id to read
                    ident = idents[key] = (fileid.identity(os.stat(link))
                                           if vma.path.startswith(memfd.PREFIX) or vma.deleted
                                           else file_identity(link, vma.path))
                except OSError as exc:
                    raise CkptError(f"cannot examine the file mapped at {vma.start:#x} in process {pid}: "
                                    f"{exc.strerror}") from exc
            rec.file.CopyFrom(ident)
            if vma.path.startswith(memfd.PREFIX):  # its bytes are stored once for the object, by its owner
                rec.content_owner = memfd.owner_of(ident.ino)
            elif vma.deleted:  # likewise a deleted file's
                if key not in ghosts:
                    link = map_files_path(pid, rec)
                    ghosts[key] = _ghost_of(link, vma.path, f"process {pid}: the mapping at {vma.start:#x}",
                                            deleted_max)
                rec.ghost.CopyFrom(ghosts[key])
                rec.content_owner = rec.ghost.owner
            else:  # a file of a tmpfs (POSIX shared memory): its content travels with the image
                if key not in shm_files:
                    link = map_files_path(pid, rec)
                    shm_files[key] = (shmfile.record(link, vma.path, f"process {pid}: the mapping at {vma.start:#x}",
                                                     deleted_max) if shmfile.on_tmpfs(link) else None)
                if shm_files[key] is not None:
                    rec.shm_file.CopyFrom(shm_files[key])
                    rec.content_owner = rec.shm_file.owner
        if kind is Kind.SYSV_SHM:  # the segment's bytes are stored once, by its owner (sysv-<shmid>)
            segments = segments if segments is not None else sysvshm.read_segments()
            rec.sysv.CopyFrom(sysvshm.describe(pid, vma.start, vma.inode, segments))
            rec.content_owner = sysvshm.OWNER.format(shmid=vma.inode)
        if kind is Kind.ANON_SHARED:
            rec.content_owner = str(pid)
            if vma.inode:  # the shmem object: two VMAs with one inode are two views of the same pages
                rec.file.CopyFrom(common_pb2.FileIdentity(ino=vma.inode))
        out.append(rec)
    guards.dump(pid, out, SPECIAL_KINDS)
    return out


def _ghost_of(link: str, name: str, where: str, deleted_max: int) -> common_pb2.Ghost:
    """The ghost record of a deleted file mapped (``link``: its map_files entry)."""
    st = os.stat(link)
    if st.st_nlink and stat.S_ISREG(st.st_mode):
        raise Unsupported(f"{where} is of {name}, removed under that name but still linked under another "
                          f"({st.st_nlink} links)", hint="the restore would not know its other name")
    return ghost.record(link, st, name=name, where=where, limit=deleted_max)


BRK = Query("brk(0)", NR.brk, (0,))
#: What :func:`dump_mm` asks the process (a dump may ask them of a whole tree at once: inject.ask_all).
QUERIES = (BRK,)


def dump_mm(pid: int, snap: Snapshot, inj: Injector | None, mem: ProcMem, vmas: Sequence[mm_pb2.Vma]) -> mm_pb2.MmEntry:
    """The mm_struct fields: /proc/PID/stat, brk(0) injected (stat has no current brk), auxv, exe.

    ``inj`` None (a pre-dump: the target runs, nothing is injected): the record
    describes the layout only and its ``brk`` is 0 — unknown.
    """
    st = snap.stat
    brk = inj.ask(BRK)[0] if inj is not None else 0
    if inj is not None:
        crosscheck.check_brk(pid, brk, st.start_brk, snap.vmas)
    exe_path = os.readlink(f"/proc/{pid}/exe")
    exe = os.stat(f"/proc/{pid}/exe")
    exe_ghost = ghost.is_deleted(exe_path, exe)
    if exe_ghost:  # its mappings have the same ghost: the exe link is set to it (deleted_max was checked there)
        exe_path = ghost.name_of(exe_path)
    mm = mm_pb2.MmEntry(
        start_code=st.start_code, end_code=st.end_code, start_data=st.start_data, end_data=st.end_data,
        start_brk=st.start_brk, brk=brk, start_stack=st.start_stack, arg_start=st.arg_start, arg_end=st.arg_end,
        env_start=st.env_start, env_end=st.env_end, auxv=snap.auxv.raw, exe_path=exe_path,
    )
    if exe_ghost:
        mm.exe.CopyFrom(fileid.identity(exe))
        mm.exe_ghost.CopyFrom(ghost.record(f"/proc/{pid}/exe", exe, name=exe_path,
                                           where=f"process {pid}: its executable", limit=1 << 62))
        if not any(v.content_owner == mm.exe_ghost.owner for v in vmas):
            raise Unsupported(f"process {pid}: its executable {exe_path} was deleted and is no longer mapped, "
                              "so its content is not saved", hint="dump before the executable is deleted")
    else:
        mm.exe.CopyFrom(file_identity(f"/proc/{pid}/exe", exe_path))
    mm.def_flags = vmflags.dump_def_flags(snap, inj)
    if inj is not None:  # the header of each AIO ring, refused if a restore cannot give it back
        aio.dump_rings(pid, inj, mem, vmas)
    for v in vmas:
        if v.kind == Kind.VDSO:  # kept whole: another kernel's restore puts it back as a proxy (resources.vdso)
            mm.vdso = mem.read(v.start, v.end - v.start)
            mm.vdso_sha256 = hashlib.sha256(mm.vdso).digest()
    return mm


@dataclass(frozen=True)
class PageStats:
    """What a page dump or fill moved."""

    pages_stored: int = 0
    pages_zero: int = 0
    bytes_read: int = 0
    seconds: float = 0.0


def _scan_vmas(pagemap_fd: int, vmas: Sequence[mm_pb2.Vma]) -> Iterator[tuple[mm_pb2.Vma, list[tuple[int, int, bool]]]]:
    """Each of ``vmas`` (address order) with the (start, end, zero) runs of its pages to save.

    One PAGEMAP_SCAN over the span of all of them, cut at their bounds here (the
    kernel walks only mapped areas, and may join runs of two adjacent ones): a
    scan per VMA cost a process of ~20 VMAs ~0.3 ms of set-up and ioctls.
    Without PAGEMAP_SCAN (before Linux 6.7, or disabled: :mod:`ckpt.features`)
    the same runs come from batched pagemap reads, one per stretch of adjacent
    VMAs (a read covers gaps page by page, and the gap below the stack is ~2^35 pages).
    """
    if not vmas:
        return
    anyof = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
    ret = anyof | PAGE_IS_FILE | PAGE_IS_PFNZERO
    if pagemap_scan_works():
        regions = list(pagemap_scan(pagemap_fd, vmas[0].start, vmas[-1].end, category_anyof_mask=anyof,
                                    return_mask=ret))
    else:
        regions = []
        zero = zero_pfns()
        buf = bytearray(min(READ_CHUNK_PAGES, max((v.end - v.start) // PAGE_SIZE for v in vmas)) * 8)
        for lo, hi in merge_intervals((v.start, v.end) for v in vmas):
            regions.extend(read_regions(pagemap_fd, lo, hi, category_anyof_mask=anyof, return_mask=ret,
                                        zero=zero, buf=buf))
    i = 0
    for v in vmas:
        while i < len(regions) and regions[i].end <= v.start:
            i += 1
        runs = []
        j = i
        while j < len(regions) and regions[j].start < v.end:
            r = regions[j]
            j += 1
            if v.kind == Kind.FILE_PRIVATE and r.categories & PAGE_IS_FILE:
                continue  # still the file's page: restore maps the file
            runs.append((max(r.start, v.start), min(r.end, v.end), bool(r.categories & PAGE_IS_PFNZERO)))
        yield v, guards.readable_runs(v, runs)


# --- shared anonymous memory between processes ---------------------------------------------

#: Page owner of a shmem object (MAP_SHARED|MAP_ANONYMOUS) that several processes of a tree map:
#: its pages are stored once, by offset in the object, not per process.
SHMEM_OWNER = "shmem-{ino}"


def is_object_view(v: mm_pb2.Vma) -> bool:
    """A view of an object whose bytes a dump stores once, by its owner, not per process (memfd, SysV shm,
    a deleted file, a file of a tmpfs)."""
    return v.kind == Kind.SYSV_SHM or is_memfd_view(v) or is_ghost_view(v) or v.HasField("shm_file")


def is_ghost_view(v: mm_pb2.Vma) -> bool:
    """A mapping of a deleted file: the restore maps the ghost it makes again (:mod:`ckpt.resources.ghost`)."""
    return v.HasField("ghost")


def is_memfd_view(v: mm_pb2.Vma) -> bool:
    """A mapping of a memfd: its file is the object the restore recreates (:mod:`ckpt.resources.memfd`)."""
    return v.content_owner.startswith("memfd-")


def is_shmem_view(v: mm_pb2.Vma) -> bool:
    """A view of a shmem object whose pages are stored once for the tree (see :func:`share_anon_objects`)."""
    return v.content_owner.startswith("shmem-")


def share_anon_objects(vmas_of: Mapping[int, Sequence[mm_pb2.Vma]]
                       ) -> dict[str, tuple[int, mm_pb2.Vma, list[tuple[int, int]]]]:
    """Mark every shared anonymous VMA as a view of its object; {owner: (pid, a view to read it by, the parts
    of it mapped)}.

    Their ``content_owner`` becomes ``shmem-INO`` and their ``file.size`` the object's size: the restore
    creates the object once, of that size (also when the tree maps only parts of it: munmapped in part, or
    each process its own part), and maps every view into every process at its offset (as fork and munmap
    had left them), and its pages come from the one owner, read through the object itself
    (:func:`dump_shmem`): a process's page table lacks the pages it never touched — written by a child
    since exited, or by another process of the tree (fork does not copy a shared mapping's) — but only in
    the parts some view maps: the rest no process can reach any more.
    """
    views_of: dict[int, list[tuple[int, mm_pb2.Vma]]] = {}
    for pid, vmas in vmas_of.items():
        for v in vmas:
            if v.kind == Kind.ANON_SHARED and v.file.ino:
                views_of.setdefault(v.file.ino, []).append((pid, v))
    out: dict[str, tuple[int, mm_pb2.Vma, list[tuple[int, int]]]] = {}
    for ino, views in views_of.items():
        pid, first = views[0]
        size = os.stat(map_files_path(pid, first)).st_size
        owner = SHMEM_OWNER.format(ino=ino)
        for _, v in views:
            v.content_owner = owner
            v.file.size = size
        out[owner] = (pid, first, merge_intervals((v.pgoff, v.pgoff + v.end - v.start) for _, v in views))
    return out


def map_files_path(pid: int, v: mm_pb2.Vma) -> str:
    """``/proc/PID/map_files/START-END``: opens the very object mapped there (root only)."""
    return f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}"


def dump_shmem(pid: int, v: mm_pb2.Vma, pages: PageWriter, parts: Sequence[tuple[int, int]] = ((0, 1 << 63),)
               ) -> PageStats:
    """Every populated page of the shmem object behind ``v`` of ``pid`` inside ``parts`` (sorted, disjoint
    object offsets: the parts some process maps), by offset in the object.

    Read through ``/proc/PID/map_files`` (the object itself, so pages no process
    has faulted in count too), skipping holes (:func:`ckpt.resources.memfd.read_content`).
    """
    t0 = time.monotonic()
    stored = nbytes = 0
    for offset, data in memfd.read_content(map_files_path(pid, v)):
        for s, e in intersect(((offset, offset + len(data)),), parts):
            pages.add(s, data if e - s == len(data) else memoryview(data)[s - offset:e - offset])
            stored += (e - s) // PAGE_SIZE
            nbytes += e - s
    return PageStats(stored, 0, nbytes, time.monotonic() - t0)


def fill_shmem(image: Image, owner: str, pid: int, v: mm_pb2.Vma) -> PageStats:
    """Write the stored pages of shmem ``owner`` into the object now mapped at ``v`` in ``pid``."""
    t0 = time.monotonic()
    stored = nbytes = 0
    fd = os.open(map_files_path(pid, v), os.O_RDWR | os.O_CLOEXEC)

    def counted() -> Iterator[tuple[int, bytes]]:
        nonlocal stored, nbytes
        for offset, data in image.iter_pages(owner):
            yield offset, data
            stored += len(data) // PAGE_SIZE
            nbytes += len(data)

    try:
        hugetlb.write_object(fd, counted())  # (pwrite, or through a mapping: hugetlbfs has no write())
    finally:
        os.close(fd)
    return PageStats(stored, 0, nbytes, time.monotonic() - t0)


@dataclass
class ShmemObjects:
    """The shared objects of a tree being restored: where each shmem object was first mapped
    ({owner: (pid, vma)}), and the memfd objects (created once, reopened by every other user)."""

    first: dict[str, tuple[int, mm_pb2.Vma]] = field(default_factory=dict)
    memfds: memfd.MemfdObjects = field(default_factory=memfd.MemfdObjects)
    sysv: sysvshm.SysvObjects = field(default_factory=sysvshm.SysvObjects)
    ghosts: ghost.GhostObjects = field(default_factory=ghost.GhostObjects)


def dump_pages(pid: int, vmas: Sequence[mm_pb2.Vma], pages: PageWriter, mem: ProcMem,
               on_bytes: Callable[[int], None] | None = None, *, keep_shared: bool = False) -> PageStats:
    """Stream the pages worth saving of every VMA into ``pages`` (bounded memory: its chunk buffers).

    A full dump is the delta case with every page dirty and no parent: one
    code path reads and stores pages for both.  ``on_bytes(total so far)``
    after each buffer handed to the writer: the CLI's progress line.
    ``keep_shared``: as for :func:`dump_pages_delta`.
    """
    d = dump_pages_delta(pid, vmas, pages, mem, dirty=_EVERYTHING, in_parent=(), on_bytes=on_bytes,
                         keep_shared=keep_shared)
    return PageStats(d.pages_stored, d.pages_zero, d.bytes_read, d.seconds)


#: The whole address space as one interval: "every page is dirty" for a full dump.
_EVERYTHING = ((0, 1 << 64),)


# ---------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------


#: Why a changed mapped file is refused even with --allow-changed-files.
_MAPPED_HINT = ("the pages of a mapped file that the image does not hold come from the file: another file there would "
                "corrupt the process. Put the file the process was dumped with at that path (on another machine: "
                "the same package version)")


def _mapped_mismatch(path: str, opened: str, want: common_pb2.FileIdentity, allow_changed: bool) -> str | None:
    """None if the file ``opened`` (at the image's ``path``) is the image's; a note if it differs only where
    ``allow_changed`` may accept it (:attr:`fileid.Mismatch.same_contents`); else RestoreError."""
    try:
        st = os.stat(opened)
    except OSError as exc:
        raise RestoreError(f"mapped file {path} cannot be opened: {exc.strerror}") from exc
    found = fileid.compare(st, want, lambda: fileid.BUILD_IDS.of_path(opened, path)[1])
    if not found:
        return None
    if allow_changed and found.same_contents:
        return f"{found.text(path)}; its build-id and size are the image's: mapped as it is (--allow-changed-files)"
    hint = _MAPPED_HINT
    if found.same_contents:
        hint += "; its build-id and size match: --allow-changed-files accepts it"
    raise RestoreError(found.text(path), hint=hint)


def check_files(mm: mm_pb2.MmEntry, vmas: Sequence[mm_pb2.Vma], *, allow_changed: bool = False) -> list[str]:
    """Refuse (RestoreError) before creating anything if a mapped file or the exe changed; the notes of those
    ``allow_changed`` accepts (a copy that only lost its mtime, see :func:`_mapped_mismatch`).

    Each file is checked by path, size, mtime and build-id (:mod:`ckpt.resources.fileid`), once.
    """
    wanted = {v.name: v.file for v in vmas if v.kind in _FILE_KINDS
              and not is_memfd_view(v) and not is_ghost_view(v)}  # no path: the restore makes them again
    if not mm.HasField("exe_ghost"):
        wanted.setdefault(mm.exe_path, mm.exe)
    notes = []
    for path, ident in wanted.items():
        note = _mapped_mismatch(path, path, ident, allow_changed)
        if note:
            notes.append(note)
    return notes


def special_vmas(vmas: Sequence[mm_pb2.Vma]) -> dict[int, mm_pb2.Vma]:
    """The recorded kernel-installed areas by kind (VDSO, VVAR, VVAR_VCLOCK)."""
    return {v.kind: v for v in vmas if v.kind in _KERNEL_AREAS}


def move_vdso(inj: Injector, current: dict[int, tuple[int, int]], target: Mapping[int, tuple[int, int]],
              temp: int) -> None:
    """mremap [vdso]/[vvar]/[vvar_vclock] of the helper from ``current`` to ``target`` (kind → (start, end)).

    ``target`` keeps their sizes: the image's addresses (the same kernel), or the
    place :func:`ckpt.resources.vdso.arrange` found for this kernel's areas.
    ``temp`` is a free area (large enough for all of them) used as a stop-over
    when the target of one area is where another one is now (else each moves
    straight there, and one already in place stays: a ptrace round trip each saved).
    """
    moving = {k: t for k, t in target.items() if current[k][0] != t[0]}
    if not any(ts < ce and cs < te for ts, te in moving.values() for cs, ce in current.values()):
        for kind, (ts, _) in moving.items():  # no area lands where another one is now: straight there
            start, end = current[kind]
            inj.call(NR.mremap, start, end - start, end - start, MREMAP_MAYMOVE | MREMAP_FIXED, ts)
        return
    parked: dict[int, int] = {}
    at = temp
    for kind in moving:
        start, end = current[kind]
        inj.call(NR.mremap, start, end - start, end - start, MREMAP_MAYMOVE | MREMAP_FIXED, at)
        parked[kind] = at
        at += end - start
    for kind, (ts, te) in moving.items():
        inj.call(NR.mremap, parked[kind], te - ts, te - ts, MREMAP_MAYMOVE | MREMAP_FIXED, ts)


class _FileOpener:
    """Opens files by path inside the target (so the mapping's file is the target's own); one fd per path."""

    def __init__(self, inj: Injector, scratch: Scratch, pid: int, own_fds: bool = True,
                 allow_changed: bool = False) -> None:
        self.inj, self.scratch, self.pid, self.own_fds = inj, scratch, pid, own_fds
        self.allow_changed = allow_changed
        self.fds: dict[tuple[str, int], int] = {}

    def open(self, path: str, flags: int, ident: common_pb2.FileIdentity | None) -> int:
        key = (path, flags)
        if key in self.fds:
            return self.fds[key]
        raw = os.fsencode(path) + b"\0"
        if len(raw) > self.scratch.size:
            raise Unsupported(f"path of mapped file too long: {path[:80]}…")
        self.scratch.write(0, raw)
        try:
            fd = self.inj.call(NR.openat, _AT_FDCWD & ((1 << 64) - 1), self.scratch.addr, flags | os.O_CLOEXEC, 0)
        except OSError as exc:
            raise RestoreError(f"cannot open {path} in the restored process: {os.strerror(exc.errno or 0)}") from exc
        self.fds[key] = fd
        if ident is not None:  # what was opened, not what the path names now: the check is race-free
            _mapped_mismatch(path, f"/proc/{self.pid}/fd/{fd}", ident, self.allow_changed)
        return fd

    def close_all(self) -> None:
        """Close the files opened for mappings: one close_range when there are several.

        The restore has closed every descriptor of the helper before mapping
        (DESIGN §4) and opens the image's files only after: between the lowest
        and the highest of ours there is nothing else to close.
        """
        fds = sorted(set(self.fds.values()))
        if len(fds) > 1 and self.own_fds:
            self.inj.call(NR.close_range, fds[0], fds[-1], 0, name=f"close_range({fds[0]}, {fds[-1]})")
        else:  # (a table shared with a process restored already holds its files in between)
            for fd in fds:
                self.inj.call(NR.close, fd)
        self.fds.clear()


def map_vmas(inj: Injector, scratch: Scratch, pid: int, vmas: Sequence[mm_pb2.Vma],
             shmem_objects: ShmemObjects | None = None, *, own_fds: bool = True, allow_changed: bool = False) -> int:
    """mmap every non-special VMA at its address with its final backing and protection; count mapped.

    Mapping with the final protection right away is enough: pages are filled
    afterwards through process_vm_writev (writable areas) or /proc/PID/mem,
    which writes read-only and PROT_NONE pages too (a private one gets its COW copy).
    A view of a shmem object of the tree (:func:`is_shmem_view`) maps the
    object an earlier process created (through its ``map_files`` entry), or
    creates it and records it in ``shmem_objects``.  ``own_fds`` False: the
    descriptor table is shared with a process restored already (CLONE_FILES):
    the files opened for mappings are closed one by one.  ``allow_changed``: as for :func:`check_files`.
    A VMA inherited from the parent's helper (:func:`ckpt.resources.cow.is_inherited`) stays as it is,
    with only its shared pages kept.
    """
    opener = _FileOpener(inj, scratch, pid, own_fds, allow_changed)
    n = 0
    made: list[tuple[int, int]] = []  # whole shmem objects mapped for their parts: (address, size)
    shmem: dict[int, list[tuple[int, int, int]]] = {}  # shmem inode -> (start, end, pgoff) mapped fresh
    attached: set[int] = set()  # SysV attach bases done
    try:
        for v in vmas:
            if v.kind in SPECIAL_KINDS or v.kind == Kind.AIO_RING:  # a ring: aio.restore_rings, once all is mapped
                continue
            if cow.is_inherited(v):  # mapped and filled by the parent before it cloned us: kept as it is
                cow.keep_inherited(inj, v)
                n += 1
                continue
            if v.kind == Kind.SYSV_SHM:
                objects = shmem_objects if shmem_objects is not None else ShmemObjects()
                objects.sysv.ensure(v.sysv)
                objects.sysv.attach(inj, v, attached, vmas)
                n += 1
                continue
            length = v.end - v.start
            flags = v.flags | MAP_FIXED  # MAP_GROWSDOWN kept: a growsdown area must still grow after restore
            fd, offset = -1, 0
            if v.kind in _FILE_KINDS:
                writable_shared = v.kind == Kind.FILE_SHARED and "mw" in v.vm_flags.split()
                access = os.O_RDWR if writable_shared else os.O_RDONLY
                if is_memfd_view(v):
                    objects = shmem_objects if shmem_objects is not None else ShmemObjects()
                    fd = objects.memfds.open_in(inj, scratch, v.content_owner, memfd.name_of(v.name), v.file.size,
                                                access, v.file.mode, huge=hugetlb.page_size_in(v.flags))
                    opener.fds[(f"memfd {v.content_owner} {v.start:#x}", access)] = fd  # closed with the others
                elif is_ghost_view(v):  # the one copy of the deleted file, whoever else holds it
                    if shmem_objects is None:
                        raise RestoreError(f"the deleted file mapped at {v.start:#x} needs the restore's ghosts")
                    fd = shmem_objects.ghosts.open_in(inj, scratch, v.ghost, v.name, access)
                    opener.fds[(f"ghost {v.content_owner} {v.start:#x}", access)] = fd
                else:
                    fd = opener.open(v.name, access, v.file)
                offset = v.pgoff
            elif v.kind not in _ANON_KINDS:
                raise Unsupported(f"restoring a {mm_pb2.Vma.Kind.Name(v.kind)} mapping at {v.start:#x}")
            if is_shmem_view(v):
                first = (shmem_objects or ShmemObjects()).first.get(v.content_owner)
                if first is None and (v.pgoff != 0 or length != v.file.size):
                    # Part of a bigger object: made whole elsewhere, this part mapped from it (mremap with
                    # old_size 0 makes a second view of shared pages), the whole unmapped once all is mapped.
                    whole = _whole_object(inj, pid, vmas, v, flags & ~MAP_FIXED)
                    made.append((whole, v.file.size))
                    _map_view(inj, whole + v.pgoff, v)
                    if shmem_objects is not None:
                        shmem_objects.first[v.content_owner] = (pid, v)
                    n += 1
                    continue
                if first is None:
                    if shmem_objects is not None:
                        shmem_objects.first[v.content_owner] = (pid, v)
                else:
                    fd = opener.open(map_files_path(*first), os.O_RDWR, None)
                    flags, offset = (flags & ~MAP_ANONYMOUS), v.pgoff
            alias = _shmem_alias(shmem, v) if v.kind == Kind.ANON_SHARED and not is_shmem_view(v) else None
            if alias is not None:
                # A second view of a shmem object mapped already (mremap old_size 0 makes one):
                # a fresh MAP_SHARED|MAP_ANONYMOUS would split what the process shares with itself.
                _map_view(inj, alias, v)
                n += 1
                continue
            if v.kind == Kind.ANON_SHARED and v.file.ino:
                shmem.setdefault(v.file.ino, []).append((v.start, v.end, v.pgoff))
            # A private mapping made read-only after it was writable (a library's RELRO) keeps the kernel's
            # commit charge, VM_ACCOUNT ("ac"): mapped writable first, then given its protection, it has it
            # too, and stays a mapping apart from its neighbours as it was (/proc/PID/maps shows both).
            # Anonymous memory keeps it only once it has an anon_vma (a page was ever written): one page is
            # written and dropped again first, as the kernel's mprotect() would otherwise uncharge it.
            charged = not v.prot & PROT_WRITE and "ac" in v.vm_flags.split() and not flags & MAP_SHARED
            try:
                got = inj.mmap(v.start, length, v.prot | (PROT_WRITE if charged else 0), flags, fd, offset)
                if charged and got == v.start:
                    if fd < 0:
                        process_vm_writev(pid, [(buffer_address(_ONE_ZERO), 1)], [(v.start, 1)])
                        inj.madvise(v.start, PAGE_SIZE, MADV_DONTNEED)
                    inj.mprotect(v.start, length, v.prot)
            except OSError as exc:
                if hugetlb.page_size_in(flags):
                    raise hugetlb.refusal(exc, length) from exc
                raise RestoreError(f"mmap of {v.name or 'anonymous memory'} at {v.start:#x}-{v.end:#x} failed: "
                                   f"{os.strerror(exc.errno or 0)}") from exc
            if got != v.start:
                raise RestoreError(f"mmap placed {v.start:#x} at {got:#x}")
            vmflags.restore_vma(inj, v, v.vm_flags.split())  # advice and locks live in the smaps letters only
            n += 1
    finally:
        opener.close_all()
        for addr, size in made:
            inj.munmap(addr, size)
    return n


def _whole_object(inj: Injector, pid: int, vmas: Sequence[mm_pb2.Vma], v: mm_pb2.Vma, flags: int) -> int:
    """Map a new shmem object of ``v.file.size`` bytes (``flags``: the view's, MAP_NORESERVE kept: the object's
    accounting) where neither the image's mappings nor the helper's are; its address."""
    taken = [(m.start, m.end) for m in read_maps(pid)] + [(m.start, m.end) for m in vmas]
    align = hugetlb.page_size_in(flags) or PAGE_SIZE  # (hugetlb memory is mapped at its page size's multiples)
    at = free_area(v.file.size + align - PAGE_SIZE, taken)
    at = -(-at // align) * align
    try:
        return inj.mmap(at, v.file.size, PROT_READ | PROT_WRITE, flags | MAP_FIXED_NOREPLACE)
    except OSError as exc:
        raise RestoreError(f"cannot make the {v.file.size}-byte shared object of the mapping at {v.start:#x} again: "
                           f"{os.strerror(exc.errno or 0)}") from exc


def _map_view(inj: Injector, source: int, v: mm_pb2.Vma) -> None:
    """Map ``v`` as a second view of the shared pages mapped at ``source`` (mremap with old_size 0)."""
    length = v.end - v.start
    inj.call(NR.mremap, source, 0, length, MREMAP_MAYMOVE | MREMAP_FIXED, v.start)
    inj.mprotect(v.start, length, v.prot)
    vmflags.restore_vma(inj, v, v.vm_flags.split())


_ONE_ZERO = bytearray(1)



def _shmem_alias(shmem: dict[int, list[tuple[int, int, int]]], v: mm_pb2.Vma) -> int | None:
    """Address where an already mapped view of ``v``'s shmem object holds ``v``'s first byte, if one covers it."""
    if not v.file.ino:
        return None
    for start, end, pgoff in shmem.get(v.file.ino, ()):
        if pgoff <= v.pgoff and v.pgoff + (v.end - v.start) <= pgoff + (end - start):
            return start + (v.pgoff - pgoff)
    return None


def _writable(v: mm_pb2.Vma) -> bool:
    return bool(v.prot & PROT_WRITE) and bool(v.prot & PROT_READ)


class _PagePlacer:
    """Writes bytes at an address of the restored process the way its VMA needs.

    ``process_vm_writev`` where the VMA is readable and writable, ``/proc/PID/mem``
    elsewhere (it writes read-only and PROT_NONE pages too); a piece crossing a
    VMA boundary is split so each part goes the right way.
    """

    def __init__(self, pid: int, mem: ProcMem, vmas: Sequence[mm_pb2.Vma]) -> None:
        self.pid, self.mem = pid, mem
        self.mapped = [v for v in vmas if v.kind not in SPECIAL_KINDS]
        self.starts = [v.start for v in self.mapped]

    def vma_at(self, addr: int) -> mm_pb2.Vma:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0 or addr >= self.mapped[i].end:
            raise RestoreError(f"the image has page data at {addr:#x}, outside every mapping it records")
        return self.mapped[i]

    def pieces(self, start: int, end: int) -> Iterable[tuple[int, int, mm_pb2.Vma]]:
        """``[start, end)`` cut at VMA boundaries: (start, end, vma) each."""
        while start < end:
            v = self.vma_at(start)
            stop = min(end, v.end)
            yield start, stop, v
            start = stop

    def write_pieces(self, buf: memoryview, pieces: Sequence[tuple[int, int, int]]) -> None:
        """Write (vaddr, offset in ``buf``, length) pieces of one writable buffer.

        The parts in readable+writable VMAs go in one ``process_vm_writev`` (it
        takes many ranges: scattered dirty pages cost one call per chunk, not
        one per page); the rest, and whatever it could not write, through
        ``/proc/PID/mem``.
        """
        base = buffer_address(buf)
        local: list[tuple[int, int]] = []
        remote: list[tuple[int, int]] = []
        for vaddr, start, n in pieces:
            for s, e, v in self.pieces(vaddr, vaddr + n):
                off = start + (s - vaddr)
                if _writable(v):
                    local.append((base + off, e - s))
                    remote.append((s, e - s))
                else:
                    self.mem.write(s, buf[off:off + (e - s)])
        if not local:
            return
        try:
            done = process_vm_writev(self.pid, local, remote)
        except OSError:
            done = 0  # not even the first range: every piece through /proc/PID/mem
        for (laddr, n), (raddr, _) in zip(local, remote):
            if done >= n:
                done -= n
                continue
            off = laddr - base
            self.mem.write(raddr + done, buf[off + done:off + n])  # short: stopped at the first it could not write
            done = 0

    def write_zeros(self, start: int, end: int) -> None:
        zeros = _ZEROS
        while start < end:
            take = min(end - start, len(zeros))
            self.write_pieces(zeros, [(start, 0, take)])
            start += take


#: What :meth:`_PagePlacer.write_zeros` writes from (writable: process_vm_writev takes its address; never written).
_ZEROS = memoryview(bytearray(1 << 20))


class PageFiller:
    """The threads that read, decompress and write page data, and their chunk buffers.

    Every chunk is decompressed and written by the same thread, ``threads``
    chunks at a time: decompression and the page faults of the writes then use
    every core, instead of one thread writing while others decompress.  One
    filler serves every process of a restore: started per process, the threads
    and their buffers (allocated afresh, so faulted in by the first chunk each
    time) cost a process of 1 MiB ~0.5 ms, a fifth of its memory phase.  The
    buffers grow to the biggest chunk seen and stay until :meth:`close`.
    """

    def __init__(self, threads: int = FILL_THREADS) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()

    def submit(self, placer: _PagePlacer, reader: ChunkReader, index: int,
               pieces: list[tuple[int, int, int]]) -> Future[int]:
        """Load chunk ``index`` of ``reader`` and write its ``pieces`` through ``placer``; bytes written."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="ckpt-fill")
        return self._pool.submit(self.fill_chunk, placer, reader, index, pieces)

    def fill_chunk(self, placer: _PagePlacer, reader: ChunkReader, index: int,
                   pieces: list[tuple[int, int, int]]) -> int:
        """One chunk, on the calling thread: read, check, decompress and write its pages; bytes written."""
        need_in, need_out = reader.buffer_sizes
        inbuf, outbuf = getattr(self._local, "bufs", (bytearray(), bytearray()))
        if len(inbuf) < need_in or len(outbuf) < need_out:  # grown, never shrunk: they stay warm
            inbuf, outbuf = self._local.bufs = (bytearray(max(need_in, len(inbuf))),
                                                bytearray(max(need_out, len(outbuf))))
        raw = reader.load_into(index, inbuf, outbuf)
        placer.write_pieces(raw, pieces)
        return sum(n for _, _, n in pieces)

    def close(self) -> None:
        """Stop the threads and drop the buffers; a later :meth:`submit` starts new ones."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._local = threading.local()

    def __enter__(self) -> PageFiller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def fill_pages(pid: int, mem: ProcMem, chain: Sequence[Image], vmas: Sequence[mm_pb2.Vma],
               on_bytes: Callable[[int, int], None] | None = None,
               sources: Sequence[PageSource] | None = None, filler: PageFiller | None = None) -> PageStats:
    """Write every stored page of ``pid`` from the image chain into the mapped VMAs.

    Pages arrive chunk by chunk as memoryviews of the reader's reused buffers
    (no copies); a piece crossing a VMA boundary is split so each part goes
    the right way.  ZERO pages need a write only in private file mappings
    (anonymous memory is zero already).  ``on_bytes(done, total)`` reports progress,
    at most once per MiB written.  ``sources``: only these runs (a staged
    restore's share of :func:`~ckpt.image.chain.resolve_pages`); default: every page.
    ``filler``: the restore's :class:`PageFiller` (default: one for this call).
    """
    if filler is None:
        with PageFiller() as own:
            return fill_pages(pid, mem, chain, vmas, on_bytes, sources, own)
    t0 = time.monotonic()
    placer = _PagePlacer(pid, mem, vmas)
    if sources is None:
        sources = resolve_pages(chain, pid)
    zero = nbytes = 0
    total = sum(s.nr_pages for s in sources if s.image is not None) * PAGE_SIZE
    reported = 0
    # Pieces of two chunks never overlap: the chunks are written in any order, a few at a time.
    with chain_chunk_jobs(chain, pid, sources) as jobs:
        if len(jobs) == 1:  # one chunk (a small process): nothing to overlap, no hand-off to a thread
            nbytes = filler.fill_chunk(placer, *jobs[0])
            jobs = []
        pending: collections.deque[Future[int]] = collections.deque()
        try:
            for job in jobs:
                pending.append(filler.submit(placer, *job))
                while pending and (len(pending) > 2 * filler.threads or pending[0].done()):
                    nbytes += pending.popleft().result()
                    if on_bytes is not None and nbytes - reported >= 1 << 20:
                        on_bytes(nbytes, total)
                        reported = nbytes
            while pending:
                nbytes += pending.popleft().result()
        except BaseException:
            for f in pending:  # the readers close on the way out: no chunk of theirs may still load
                f.cancel()
            futures_wait(pending)
            raise
    stored = nbytes // PAGE_SIZE
    if on_bytes is not None:
        on_bytes(nbytes, total)
    for s in sources:
        if s.image is not None:
            continue
        zero += s.nr_pages
        for start, stop, v in placer.pieces(s.vaddr, s.vaddr + s.nr_pages * PAGE_SIZE):
            if v.kind == Kind.FILE_PRIVATE:
                placer.write_zeros(start, stop)
    return PageStats(stored, zero, nbytes, time.monotonic() - t0)


# ---------------------------------------------------------------------------
# restore in stages: a mapped layout brought to the next image's
# ---------------------------------------------------------------------------

Interval = tuple[int, int]


def _mapping_key(v: mm_pb2.Vma) -> tuple | None:
    """What :func:`map_vmas` makes a mapping from, its address aside; None: never carried over.

    Two VMAs with equal keys give the same mapping at a common address (a file
    mapping also needs the same file offset there: ``pgoff - start`` is in the
    key).  Shared anonymous memory is never carried over: its views alias one
    shmem object, which only a fresh :func:`map_vmas` of all of them recreates.
    """
    if v.kind == Kind.ANON_SHARED or is_object_view(v):
        return None
    letters = (frozenset(f for f in v.vm_flags.split() if f in vmflags.KEPT or f == "mw"), tuple(v.guards))
    file: tuple = ()
    if v.kind in _FILE_KINDS:
        file = (v.name, v.file.dev, v.file.ino, v.file.size, v.file.mtime_ns, v.pgoff - v.start)
    return (v.kind, v.prot, v.flags, letters, file)


@dataclass(frozen=True)
class LayoutDiff:
    """How to turn the mapped layout of one image into the layout of the next.

    ``kept``: address ranges mapped the same way in both (their pages carry
    over); ``removed``: ranges of the old layout to munmap; ``added``: pieces of
    new VMAs to map afresh and fill in full.  Sorted, disjoint intervals.
    """

    kept: tuple[Interval, ...]
    removed: tuple[Interval, ...]
    added: tuple[mm_pb2.Vma, ...]


def diff_layout(old: Sequence[mm_pb2.Vma], new: Sequence[mm_pb2.Vma]) -> LayoutDiff:
    """Compare two layouts range by range (a VMA that grew keeps its old part; special areas are ignored)."""
    old = sorted((v for v in old if v.kind not in SPECIAL_KINDS), key=lambda v: v.start)
    new = sorted((v for v in new if v.kind not in SPECIAL_KINDS), key=lambda v: v.start)
    ostarts = [v.start for v in old]
    kept: list[Interval] = []
    for nv in new:
        key = _mapping_key(nv)
        if key is None:
            continue
        i = max(0, bisect.bisect_right(ostarts, nv.start) - 1)
        while i < len(old) and old[i].start < nv.end:
            ov = old[i]
            if ov.end > nv.start and _mapping_key(ov) == key:
                kept.append((max(ov.start, nv.start), min(ov.end, nv.end)))
            i += 1
    kept = merge_intervals(kept)
    added: list[mm_pb2.Vma] = []
    for nv in new:
        for s, e in subtract(((nv.start, nv.end),), kept):
            piece = mm_pb2.Vma()
            piece.CopyFrom(nv)
            piece.start, piece.end = s, e
            if nv.kind in _FILE_KINDS:
                piece.pgoff = nv.pgoff + (s - nv.start)
            added.append(piece)
    removed = subtract(merge_intervals([(v.start, v.end) for v in old]), kept)
    return LayoutDiff(tuple(kept), tuple(removed), tuple(added))


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching intervals joined."""
    out: list[list[int]] = []
    for s, e in sorted(intervals):
        if s >= e:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Intersection of two sorted lists of disjoint intervals (one linear sweep)."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


#: ``a`` minus ``b``, both sorted lists of disjoint intervals (one linear sweep).
subtract = subtract_sorted


def clip_sources(sources: Sequence[PageSource], within: Sequence[Interval]) -> list[PageSource]:
    """The parts of sorted, disjoint page runs inside sorted, disjoint intervals (data offsets moved along).

    Per interval only the first and last run can stick out; the runs between
    are taken whole (a delta has thousands of runs, a layout few intervals).
    """
    out: list[PageSource] = []
    starts = [src.vaddr for src in sources]

    def clipped(src: PageSource, lo: int, hi: int) -> None:
        s, e = max(lo, src.vaddr), min(hi, src.vaddr + src.nr_pages * PAGE_SIZE)
        if s < e:
            off = src.data_offset + (s - src.vaddr) if src.image is not None else 0
            out.append(PageSource(s, (e - s) // PAGE_SIZE, src.image, off))

    for lo, hi in within:
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        j = bisect.bisect_left(starts, hi)  # runs from j on start at or after hi
        if i >= j:
            continue
        clipped(sources[i], lo, hi)
        if j - 1 > i:
            out.extend(sources[i + 1:j - 1])
            clipped(sources[j - 1], lo, hi)
    return out


def reset_pages(inj: Injector, mem: ProcMem, vmas: Sequence[mm_pb2.Vma], runs: Iterable[Interval], *,
                zero: bool) -> int:
    """Forget what earlier stages wrote in ``runs``; returns the pages reset.

    ``zero=False`` (pages the newer image no longer has): MADV_DONTNEED, so a
    private mapping reads as it would in a fresh one — zeros, or the file's
    bytes in a private file mapping.  ``zero=True`` (pages the newer image
    says are ZERO): the same in anonymous memory; a private file mapping gets
    zeros written, as :func:`fill_pages` does.  Never for shared memory (see
    :func:`_mapping_key`: it is never carried over).
    """
    placer = _PagePlacer(inj.pid, mem, vmas)
    n = 0
    for s, e in runs:
        for start, stop, v in placer.pieces(s, e):
            if v.kind in (Kind.ANON_SHARED, Kind.FILE_SHARED):
                raise RestoreError(f"cannot reset pages of a shared mapping at {start:#x}")
            if zero and v.kind == Kind.FILE_PRIVATE:
                placer.write_zeros(start, stop)
            else:  # (a locked mapping refuses MADV_DONTNEED)
                inj.madvise(start, stop - start, MADV_DONTNEED_LOCKED if "lo" in v.vm_flags.split() else MADV_DONTNEED)
            n += (stop - start) // PAGE_SIZE
    return n


def set_mm_map(inj: Injector, scratch: Scratch, opener_pid: int, mm: mm_pb2.MmEntry, *,
               allow_changed: bool = False, ghosts: ghost.GhostObjects | None = None) -> None:
    """prctl(PR_SET_MM, PR_SET_MM_MAP) with the exe file opened inside the target.

    Must run after the helper's own mappings are gone: the kernel refuses to
    change exe_file (EBUSY) while the old executable is still mapped.  When the
    helper already runs the image's executable (a Python target restored by a
    Python ckpt), the restored VMAs map that very file, so changing it would
    give EBUSY too; it is already right, and ``exe_fd = -1`` leaves it as is.  A deleted executable is
    the ghost its mappings map (``ghosts``: the restore's).
    """
    opener = _FileOpener(inj, scratch, opener_pid, allow_changed=allow_changed)
    try:
        if mm.HasField("exe_ghost"):
            if ghosts is None:
                raise RestoreError(f"the deleted executable {mm.exe_path} needs the restore's ghosts")
            exe_fd = opener.fds[("exe ghost", os.O_RDONLY)] = ghosts.open_in(inj, scratch, mm.exe_ghost, mm.exe_path,
                                                                             os.O_RDONLY)
        elif _same_inode(f"/proc/{inj.pid}/exe", mm.exe_path):
            exe_fd = -1
        else:
            exe_fd = opener.open(mm.exe_path, os.O_RDONLY, mm.exe)
        auxv = bytes(mm.auxv)
        head = prctl_mm_map(
            start_code=mm.start_code, end_code=mm.end_code, start_data=mm.start_data, end_data=mm.end_data,
            start_brk=mm.start_brk, brk=mm.brk, start_stack=mm.start_stack, arg_start=mm.arg_start,
            arg_end=mm.arg_end, env_start=mm.env_start, env_end=mm.env_end,
            auxv=scratch.addr + 512, auxv_size=len(auxv), exe_fd=exe_fd,
        )
        if len(auxv) > scratch.size - 512:
            raise Unsupported(f"auxv of {len(auxv)} bytes")
        scratch.write(0, bytes(head))
        scratch.write(512, auxv)
        try:
            inj.call(NR.prctl, PR_SET_MM, PR_SET_MM_MAP, scratch.addr, len(bytes(head)), 0)
        except OSError as exc:
            raise RestoreError(f"prctl(PR_SET_MM_MAP) refused the image's mm fields: {os.strerror(exc.errno or 0)}") from exc
    finally:
        opener.close_all()


def _same_inode(a: str, b: str) -> bool:
    """True when two paths name the same inode (False if either cannot be stat'ed)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def free_area(size: int, taken: Iterable[tuple[int, int]], *, low: int = 1 << 32, high: int = TASK_SIZE_MAX - (1 << 32)) -> int:
    """Lowest page-aligned address >= ``low`` where ``size`` bytes overlap none of ``taken``."""
    addr = low
    for s, e in sorted(taken):
        if e <= addr:
            continue
        if s >= addr + size:
            break
        addr = -(-e // PAGE_SIZE) * PAGE_SIZE
    if addr + size > high:
        raise RestoreError(f"no free {size}-byte area in the address space")
    return addr



# ---------------------------------------------------------------------------
# dump: a delta against a parent image (pre-dumps, incremental dumps)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaStats:
    """What :func:`dump_pages_delta` wrote: copied (HERE), left to the parent, zero, and unreadable."""

    pages_stored: int = 0
    pages_parent: int = 0
    pages_zero: int = 0
    pages_skipped: int = 0
    bytes_read: int = 0
    seconds: float = 0.0


def _split(start: int, end: int, intervals: Sequence[tuple[int, int]], starts: Sequence[int]) -> Iterable[tuple[int, int, bool]]:
    """``[start, end)`` cut into (s, e, inside) pieces by sorted, disjoint ``intervals``."""
    i = max(0, bisect.bisect_right(starts, start) - 1)
    pos = start
    while pos < end:
        while i < len(intervals) and intervals[i][1] <= pos:
            i += 1
        if i == len(intervals) or intervals[i][0] >= end:
            yield pos, end, False
            return
        s, e = intervals[i]
        if s > pos:
            yield pos, s, False
            pos = s
        stop = min(e, end)
        yield pos, stop, True
        pos = stop


def dump_pages_delta(pid: int, vmas: Sequence[mm_pb2.Vma], pages: PageWriter, mem: ProcMem, *,
                     dirty: Sequence[tuple[int, int]], in_parent: Sequence[tuple[int, int]],
                     running: bool = False, keep_shared: bool | None = None,
                     on_copied: "Callable[[int, memoryview], None] | None" = None,
                     on_bytes: Callable[[int], None] | None = None) -> DeltaStats:
    """Like :func:`dump_pages`, but only pages in ``dirty`` are copied; the rest are PARENT.

    Which pages exist comes from the page listing now, as for a full dump, so the
    layout is the current one whatever the parent had.  A populated page is
    copied when it is in ``dirty`` (sorted, disjoint intervals: written since
    the parent, or in a VMA nobody tracks) *or* when the parent chain lacks it
    (``in_parent``): PARENT is written only where the parent really has the page.
    Call this after the tracker's get+clear (clear, then copy).  ``running``:
    the target is not frozen, so a page unmapped meanwhile is skipped (left
    out of the pagemap; the next delta copies it if it comes back) instead of
    failing the dump.  ``on_copied(vaddr, bytes)`` sees exactly what was stored;
    ``on_bytes(total so far)`` is called after each buffer-full (progress).
    ``keep_shared`` (default: ``running``): the process runs on after the dump, so a page it shares with
    another process (since fork) is read through ``/proc/PID/mem``, which leaves it shared
    (:func:`ckpt.resources.cow.not_exclusive`; its pagemap read costs ~15 ms per GiB: skipped for a
    process the dump ends).

    Pages are read straight into the PageWriter's chunk buffers, one
    process_vm_readv per buffer-full, across VMA boundaries: each buffer is
    one frame, and the page bytes are never copied in our address space.
    """
    t0 = time.monotonic()
    keep_shared = running if keep_shared is None else keep_shared
    dstarts = [s for s, _ in dirty]
    pstarts = [s for s, _ in in_parent]
    st = {"here": 0, "parent": 0, "zero": 0, "skipped": 0, "bytes": 0}
    cap = pages.chunk_size
    # Runs in address order, each (vaddr, bytes, what): PARENT and ZERO runs wait in the
    # batch too, so scattered dirty pages are read with one process_vm_readv per buffer-full
    # instead of one per page (and the PageWriter still sees address order).
    batch: list[tuple[int, int, int]] = []
    fill = 0

    def flush() -> None:
        nonlocal fill
        _flush_delta(pid, batch, pages, mem, running, on_copied, st)
        batch.clear()
        fill = 0
        if on_bytes is not None:
            on_bytes(st["bytes"])

    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            scanned = list(_scan_vmas(fd, [v for v in vmas if v.kind not in UNSTORED_KINDS]))
        except OSError:
            if not running:
                raise
            scanned = []  # gone meanwhile (a VMA unmapped between maps and the scan is only left out)
        for v, runs in scanned:
            copy = _COPY if v.prot & PROT_READ else _COPY_FORCED
            if v.shared_with_parent:  # the parent's pages (copy-on-write since fork): the parent stores them
                runs = _without(runs, cow.shared_runs(v))
            # No dirty interval reaches into it (most VMAs of a delta): no run needs cutting by them.
            k = bisect.bisect_left(dstarts, v.end)
            clean = k == 0 or dirty[k - 1][1] <= v.start
            # Pages another process maps too go through /proc/PID/mem: process_vm_readv would copy them.
            pinned = (cow.not_exclusive(fd, _spans(_copied(runs, dirty, dstarts, v)))
                      if keep_shared and copy == _COPY and v.kind in _COW_KINDS and not clean else [])
            pinstarts = [s for s, _ in pinned]
            for start, end, is_zero in runs:
                if is_zero:
                    batch.append((start, end - start, _ZERO))
                    continue
                for ds, de, is_dirty in ((start, end, False),) if clean else _split(start, end, dirty, dstarts):
                    if is_dirty:
                        pieces: Iterable[tuple[int, int, bool]] = ((ds, de, False),)
                    else:  # mostly inside one interval the parent holds: skip the second split
                        j = bisect.bisect_right(pstarts, ds) - 1
                        pieces = ((ds, de, True),) if j >= 0 and in_parent[j][1] >= de else \
                            _split(ds, de, in_parent, pstarts)
                    for ps_, pe, have in pieces:
                        if have:
                            batch.append((ps_, pe - ps_, _PARENT))
                            continue
                        for qs, qe, forced in (_split(ps_, pe, pinned, pinstarts) if pinned else ((ps_, pe, False),)):
                            how = _COPY_FORCED if forced else copy
                            while qs < qe:
                                take = min(qe - qs, cap - fill)
                                batch.append((qs, take, how))
                                fill += take
                                qs += take
                                if fill == cap:
                                    flush()
            if len(batch) >= _MAX_BATCH:
                flush()
        flush()
    finally:
        os.close(fd)
    return DeltaStats(st["here"], st["parent"], st["zero"], st["skipped"], st["bytes"], time.monotonic() - t0)


#: VMA kinds whose stored pages are anonymous pages a forked process may share (a private file mapping's written ones).
_COW_KINDS = frozenset({Kind.ANON_PRIVATE, Kind.HEAP, Kind.STACK, Kind.FILE_PRIVATE})
#: Pages between two runs read along with them in one pagemap read (4 KiB of entries) rather than apart.
_SPAN_GAP = 512 * PAGE_SIZE


def _spans(runs: Iterable[Interval]) -> list[Interval]:
    """Runs joined across small gaps: the pagemap of a VMA with scattered pages is read in few preads."""
    out: list[list[int]] = []
    for s, e in runs:
        if out and s - out[-1][1] <= _SPAN_GAP:
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _copied(runs: Sequence[tuple[int, int, bool]], dirty: Sequence[Interval], dstarts: Sequence[int],
            v: mm_pb2.Vma) -> list[Interval]:
    """The parts of a VMA's (start, end, zero) page runs that may be copied: not zero, and dirty."""
    data = [(s, e) for s, e, z in runs if not z]
    if dirty is _EVERYTHING:
        return data
    lo = max(0, bisect.bisect_right(dstarts, v.start) - 1)
    return intersect(data, dirty[lo:bisect.bisect_left(dstarts, v.end)])


def _without(runs: Sequence[tuple[int, int, bool]], drop: Sequence[Interval]) -> list[tuple[int, int, bool]]:
    """The (start, end, zero) page runs minus the sorted, disjoint intervals ``drop``."""
    return [(s, e, z) for rs, re_, z in runs for s, e in subtract(((rs, re_),), drop)]


#: What dump_pages_delta queues for each run: copy (with process_vm_readv, or through
#: /proc/PID/mem for unreadable VMAs), leave to the parent, or record as zero.
_COPY, _COPY_FORCED, _PARENT, _ZERO = range(4)
#: Runs queued before a flush even if the buffer is not full (bounds the list for sparse layouts).
_MAX_BATCH = 4096


def _flush_delta(pid: int, batch: Sequence[tuple[int, int, int]], pages: PageWriter, mem: ProcMem, running: bool,
                 on_copied: "Callable[[int, memoryview], None] | None", st: dict[str, int]) -> None:
    """Read the queued copy runs into a borrowed chunk buffer in one go and store every
    run in order; with ``running``, pages that cannot be read are skipped."""
    if not batch:
        return
    copying = any(what in (_COPY, _COPY_FORCED) for _, _, what in batch)
    view = pages.borrow() if copying else memoryview(b"")
    try:
        # Buffer offset of every copy run, and how much of it was read.
        offsets: list[int] = []
        off = 0
        for _, n, what in batch:
            offsets.append(off)
            if what in (_COPY, _COPY_FORCED):
                off += n
        got = [0] * len(batch)
        readv = [i for i, (_, _, what) in enumerate(batch) if what == _COPY]
        if readv:
            base = buffer_address(view)
            try:
                total = process_vm_readv(pid, [(base + offsets[i], batch[i][1]) for i in readv],
                                         [(batch[i][0], batch[i][1]) for i in readv])
            except OSError:
                if not running:
                    raise
                total = 0
            for i in readv:  # a short read stops at the first page it could not read
                got[i] = min(batch[i][1], total)
                total -= got[i]
        runs: list[tuple[int, int, PageState, int]] = []  # for one PageWriter.add_runs call
        here, parent, zero = PageState.HERE, PageState.PARENT, PageState.ZERO
        for i, (vaddr, n, what) in enumerate(batch):
            if what == _PARENT:
                runs.append((vaddr, n, parent, 0))
                st["parent"] += n // PAGE_SIZE
                continue
            if what == _ZERO:
                runs.append((vaddr, n, zero, 0))
                st["zero"] += n // PAGE_SIZE
                continue
            off, ok = offsets[i], got[i]
            if ok < n:  # PROT_NONE, exec-only, or a short read: /proc/PID/mem, page by page when running
                try:
                    mem.readinto(vaddr + ok, view[off + ok:off + n])
                    ok = n
                except OSError as exc:
                    if not running and exc.errno == errno.EIO:
                        raise Unsupported(f"process {pid}: the memory at {vaddr + ok:#x} cannot be read (EIO): a "
                                          "guard region this kernel does not report (before Linux 6.15), or "
                                          "device memory") from exc
                    if not running:
                        raise
                    while ok < n:
                        try:
                            mem.readinto(vaddr + ok, view[off + ok:off + ok + PAGE_SIZE])
                        except OSError:
                            break
                        ok += PAGE_SIZE
            if ok:
                runs.append((vaddr, ok, here, off))
                if on_copied is not None:
                    on_copied(vaddr, view[off:off + ok])
                st["here"] += ok // PAGE_SIZE
                st["bytes"] += ok
            st["skipped"] += (n - ok) // PAGE_SIZE
        pages.add_runs(runs)
    except BaseException:
        pages.release_borrowed()
        raise
    if copying:
        pages.submit_borrowed()
