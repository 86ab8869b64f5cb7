"""The flags of a mapping that a program sets itself, and the ones its mm gives every new mapping.

smaps prints each VMA's flags as two-letter ``VmFlags`` (the image keeps them, ``Vma.vm_flags``).  Those a
program can set, and how a restore sets each again in the restored process, after mapping the area:

* madvise advice (:data:`ADVISED`): MADV_HUGEPAGE ``hg``, MADV_NOHUGEPAGE ``nh``, MADV_DONTDUMP ``dd``,
  MADV_DONTFORK ``dc``, MADV_WIPEONFORK ``wf``, MADV_MERGEABLE ``mg`` (KSM), MADV_SEQUENTIAL ``sr``,
  MADV_RANDOM ``rr``;
* locks: ``lo`` (mlock, MAP_LOCKED, mlockall) and ``lf`` with it (MLOCK_ONFAULT, MCL_ONFAULT: only the
  pages faulted in are resident) — mlock2 after the area is mapped; the pages the restore writes are the
  ones resident, as they were;
* ``gu`` (VM_MAYBE_GUARD, Linux 6.18): set for good once a guard region was installed in the VMA (or in one
  merged with it); a guard installed and removed again on its first page, before the pages are written;
* ``dp`` (MAP_DROPPABLE, Linux 6.11): a mapping type of its own (the kernel adds ``wf`` and ``nr``), so it
  is mapped with it (:func:`map_type`);
* ``sl`` (mseal, Linux 6.10): sealed last, when the restore has done everything else to the mappings
  (:func:`seal`);
* ``nr`` (MAP_NORESERVE) and ``gd`` (MAP_GROWSDOWN) are mmap flags (:func:`ckpt.resources.memory.dump_vmas`).

``mm->def_flags`` (``mlockall(MCL_FUTURE)``, with MCL_ONFAULT) is in no /proc file: a new mapping shows it,
and the dump has one at hand — ckpt's own injection area, mapped in the target after it froze
(:func:`dump_def_flags`); ``prctl(PR_SET_MEMORY_MERGE)`` (KSM for every new mapping: ``mg``) is
``ksm_merge_any`` in ``/proc/PID/ksm_stat``.  The restore sets it last, once every mapping is made (:func:`restore_def_flags`).
The self-check compares every VMA's VmFlags (:mod:`ckpt.observed`), so a flag not set again fails a restore.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from ..control.inject import Injector
from ..errors import RestoreError
from ..image.pb import mm_pb2
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.mman import (
    MADV_DONTDUMP, MADV_DONTFORK, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE, MADV_RANDOM, MADV_SEQUENTIAL,
    MADV_UNMERGEABLE, MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_PRIVATE, MAP_TYPE, PROT_READ, PROT_WRITE,
)
from ..procfs.maps import read_smaps_vmflags
from ..procfs.snapshot import Snapshot

__all__ = ["FEATURE", "ADVISED", "LOCKS", "KEPT", "MLOCK_ONFAULT", "MCL_FUTURE", "MCL_ONFAULT", "map_type", "restore_vma",
           "seal", "dump_def_flags", "restore_def_flags"]

#: VmFlags letters set by madvise, and the advice that sets each again.
ADVISED = {"hg": MADV_HUGEPAGE, "nh": MADV_NOHUGEPAGE, "dd": MADV_DONTDUMP, "dc": MADV_DONTFORK,
           "wf": MADV_WIPEONFORK, "mg": MADV_MERGEABLE, "sr": MADV_SEQUENTIAL, "rr": MADV_RANDOM}
#: The letters of a locked mapping: VM_LOCKED, VM_LOCKONFAULT.
LOCKS = frozenset({"lo", "lf"})
#: Every letter this module restores: two mappings that differ in one are not the same mapping.
KEPT = frozenset({*ADVISED, *LOCKS, "dp", "gu", "sl"})

#: prctl(PR_SET_MEMORY_MERGE) (Linux 6.4, include/uapi/linux/prctl.h): KSM for every mapping the mm has and makes
#: (here and not in kernel/prctl.py while another branch extends that one)
PR_SET_MEMORY_MERGE, PR_GET_MEMORY_MERGE = 67, 68
#: Mappings KSM may merge (private; a file's only once written): the ones PR_SET_MEMORY_MERGE marks.
_KSM_KINDS = frozenset({mm_pb2.Vma.ANON_PRIVATE, mm_pb2.Vma.HEAP, mm_pb2.Vma.STACK, mm_pb2.Vma.FILE_PRIVATE})
#: The image feature (ckpt.image.compat) of an image whose MmEntry.def_flags is set.
FEATURE = "mm-default-flags"
MLOCK_ONFAULT = 0x01  # include/uapi/asm-generic/mman-common.h
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4  # include/uapi/asm-generic/mman.h


def map_type(letters: Iterable[str], flags: int) -> int:
    """``flags`` (mmap's) with the mapping type ``letters`` ask for: MAP_DROPPABLE for ``dp``."""
    if "dp" in letters:
        return (flags & ~MAP_TYPE) | MAP_DROPPABLE
    return flags


def restore_vma(inj: Injector, v: mm_pb2.Vma, letters: Iterable[str]) -> None:
    """Set the advice and the lock of the mapping ``v`` (just mapped) that its VmFlags ``letters`` name."""
    letters = frozenset(letters)
    length = v.end - v.start
    for flag in sorted(letters & ADVISED.keys()):
        try:
            inj.madvise(v.start, length, ADVISED[flag])
        except OSError as exc:
            raise RestoreError(f"madvise of the mapping at {v.start:#x} ({flag}) failed: {exc.strerror}") from exc
    if "gu" in letters:  # VM_MAYBE_GUARD (6.18): sticky once a guard was installed in (or merged into) the VMA
        try:
            inj.madvise(v.start, PAGE_SIZE, MADV_GUARD_INSTALL)
            inj.madvise(v.start, PAGE_SIZE, MADV_GUARD_REMOVE)
        except OSError as exc:
            raise RestoreError(f"cannot mark the mapping at {v.start:#x} as guarded once: {exc.strerror}") from exc
    if "lo" in letters:
        onfault = MLOCK_ONFAULT if "lf" in letters else 0
        try:
            inj.call(NR.mlock2, v.start, length, onfault, name=f"mlock2({v.start:#x})")
        except OSError as exc:
            raise RestoreError(f"mlock of the mapping at {v.start:#x}-{v.end:#x} failed: {exc.strerror}",
                               hint="locked memory needs CAP_IPC_LOCK or RLIMIT_MEMLOCK room") from exc


def seal(inj: Injector, vmas: Iterable[mm_pb2.Vma]) -> int:
    """mseal() every mapping whose VmFlags say ``sl`` (Linux 6.10): last, once nothing of the restore will
    change them (a sealed mapping refuses munmap, mprotect, mremap and discarding madvise).  Returns how many."""
    n = 0
    for v in vmas:
        if "sl" in v.vm_flags.split():
            try:
                inj.call(NR.mseal, v.start, v.end - v.start, 0, name=f"mseal({v.start:#x})")
            except OSError as exc:
                raise RestoreError(f"cannot seal the mapping at {v.start:#x}-{v.end:#x} again: {exc.strerror}",
                                   hint="mseal needs Linux 6.10 or later") from exc
            n += 1
    return n


def dump_def_flags(snap: Snapshot, inj: Injector | None) -> str:
    """The lock letters mm->def_flags gives a new mapping of ``snap``'s process ("", "lo" or "lf lo").

    Read off ckpt's own injection area (mapped after the freeze, so with def_flags); a process without
    one (it refused it) is asked with a page mapped and unmapped again — only when some mapping is locked,
    as a program that called mlockall(MCL_FUTURE) and mapped nothing since cannot be told apart anyway
    from the maps.  ``inj`` None (a pre-dump): only the own area is looked at.
    """
    merge = {"mg"} if _merge_any(snap.pid, inj) else set()
    own = snap.hidden_vmas
    if own:
        return " ".join(sorted((own[0].vmflags & LOCKS) | merge))
    if inj is None or not any("lo" in v.vmflags for v in snap.vmas):
        return " ".join(merge)
    addr = inj.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    try:
        probe = next((v for v in read_smaps_vmflags(snap.pid) if v.start <= addr < v.end), None)
    finally:
        inj.munmap(addr, PAGE_SIZE)
    return " ".join(sorted((probe.vmflags & LOCKS if probe is not None else set()) | merge))


def _merge_any(pid: int, inj: Injector | None) -> bool:
    """prctl(PR_SET_MEMORY_MERGE) is on (``ksm_merge_any: yes`` in /proc/PID/ksm_stat; no file: no KSM).  A
    kernel whose ksm_stat has no such line (6.12 has not) is asked with PR_GET_MEMORY_MERGE in the process
    (EINVAL: a kernel before 6.4); without ``inj`` (a pre-dump) it is taken as off, the final dump tells."""
    try:
        with open(f"/proc/{pid}/ksm_stat", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return False
    if b"ksm_merge_any:" in text or inj is None:
        return b"ksm_merge_any: yes" in text
    try:
        return inj.call(NR.prctl, PR_GET_MEMORY_MERGE, 0, 0, 0, 0, name="prctl(PR_GET_MEMORY_MERGE)") == 1
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise


def restore_def_flags(inj: Injector, mm: mm_pb2.MmEntry, vmas: Iterable[mm_pb2.Vma]) -> None:
    """mlockall(MCL_FUTURE), with MCL_ONFAULT if so recorded, and PR_SET_MEMORY_MERGE: after every mapping of
    the image is made (a mapping made earlier by the restore would be locked too, which the image may not
    have had).  PR_SET_MEMORY_MERGE marks the mappings there are mergeable too: those the program had made
    unmergeable again (MADV_UNMERGEABLE) are made so again."""
    letters = mm.def_flags.split()
    if "mg" in letters:
        try:
            inj.call(NR.prctl, PR_SET_MEMORY_MERGE, 1, 0, 0, 0, name="prctl(PR_SET_MEMORY_MERGE)")
        except OSError as exc:
            raise RestoreError(f"prctl(PR_SET_MEMORY_MERGE) failed: {exc.strerror}") from exc
        for v in vmas:
            if "mg" not in v.vm_flags.split() and v.kind in _KSM_KINDS:
                inj.madvise(v.start, v.end - v.start, MADV_UNMERGEABLE)
    if "lo" not in letters:
        return
    how = MCL_FUTURE | (MCL_ONFAULT if "lf" in letters else 0)
    try:
        inj.call(NR.mlockall, how, name="mlockall(MCL_FUTURE)")
    except OSError as exc:
        raise RestoreError(f"mlockall(MCL_FUTURE) failed: {exc.strerror}") from exc

