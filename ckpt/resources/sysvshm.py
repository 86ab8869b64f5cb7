"""System V shared memory segments attached by the dumped processes: dumped once per segment, attached again.

A segment is not a file of the process but an object of its IPC namespace,
named by its shmid (the inode /proc/PID/maps shows for a ``/SYSV<key>``
mapping) and described by /proc/sysvipc/shm (key, size, mode, owner;
perms bit 01000, SHM_DEST, once IPC_RMID was called: it then lives until its
last detach, with key IPC_PRIVATE).  Its bytes are stored once per image,
under the page owner ``sysv-<shmid>``, read through ``/proc/PID/map_files``.

Restore: a segment that still exists with the same id, key and size (a dump
with -R, the process killed but the segment kept, a migration inside one IPC
namespace) is attached as it is — its content is the live one, which other
processes may share.  One that is gone is created again by the restorer with
its old id (``/proc/sys/kernel/shm_next_id``, CONFIG_CHECKPOINT_RESTORE),
key, size, mode and owner, and filled; a removed one is removed again once
every process has attached it.  Each mapping is an injected
``shmat(shmid, address, SHM_REMAP)`` at the attach's base, then mprotect to
the mapping's own protection (one attach can be split into several VMAs).
An attach the process since unmapped in part (munmap of some of its pages:
the segment's other pages keep their bytes, and the freed addresses may hold
other mappings now) is attached anywhere and only each of its mappings'
pages moved to their address with mremap, the rest unmapped again — an
attach at the base would cover those addresses too.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..control.inject import Injector
from ..errors import RestoreError, Unsupported
from ..image.pb import mm_pb2
from ..kernel.arch_x86_64 import NR, PAGE_SIZE
from ..kernel.libc import libc
from ..kernel.mman import MREMAP_FIXED, MREMAP_MAYMOVE

__all__ = ["OWNER", "read_segments", "describe", "SysvObjects"]

OWNER = "sysv-{shmid}"
_SHM_DEST = 0o1000
_SHM_REMAP = 0o40000
_SHM_RDONLY = 0o10000
_IPC_CREAT, _IPC_EXCL, _IPC_RMID, _IPC_SET, _IPC_STAT = 0o1000, 0o2000, 0, 1, 2
_NEXT_ID = "/proc/sys/kernel/shm_next_id"


def read_segments() -> dict[int, mm_pb2.SysvShm]:
    """/proc/sysvipc/shm of our IPC namespace, by shmid."""
    out = {}
    with open("/proc/sysvipc/shm") as f:
        next(f)  # the header
        for line in f:
            key, shmid, perms, size, _cpid, _lpid, _nattch, uid, gid = line.split()[:9]
            perms_i = int(perms, 8)
            out[int(shmid)] = mm_pb2.SysvShm(shmid=int(shmid), key=int(key), size=int(size), mode=perms_i & 0o777,
                                             uid=int(uid), gid=int(gid), removed=bool(perms_i & _SHM_DEST))
    return out


def describe(pid: int, start: int, shmid: int, segments: dict[int, mm_pb2.SysvShm]) -> mm_pb2.SysvShm:
    """The segment behind a /SYSV mapping; Unsupported if this IPC namespace does not list it."""
    seg = segments.get(shmid)
    if seg is None:
        raise Unsupported(f"process {pid}: the System V segment mapped at {start:#x} (shmid {shmid}) is not in "
                          "/proc/sysvipc/shm: another IPC namespace?")
    return seg


def _rounded(size: int) -> int:
    return -(-size // PAGE_SIZE) * PAGE_SIZE


def _whole(v: mm_pb2.Vma, vmas: Sequence[mm_pb2.Vma]) -> bool:
    """Whether the views of ``v``'s attach (same segment and base) still cover the whole segment."""
    base = v.start - v.pgoff
    return sum(w.end - w.start for w in vmas if w.kind == v.kind and w.sysv.shmid == v.sysv.shmid
               and w.start - w.pgoff == base) >= _rounded(v.sysv.size)


# --- restore ------------------------------------------------------------------------------------

_shmget = libc.shmget
_shmget.argtypes, _shmget.restype = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
_shmat = libc.shmat
_shmat.argtypes, _shmat.restype = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int], ctypes.c_void_p
_shmdt = libc.shmdt
_shmdt.argtypes, _shmdt.restype = [ctypes.c_void_p], ctypes.c_int
_shmctl = libc.shmctl
_shmctl.argtypes, _shmctl.restype = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p], ctypes.c_int


class _ipc_perm(ctypes.Structure):
    _fields_ = [("key", ctypes.c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint), ("cuid", ctypes.c_uint),
                ("cgid", ctypes.c_uint), ("mode", ctypes.c_ushort), ("pad1", ctypes.c_ushort),
                ("seq", ctypes.c_ushort), ("pad2", ctypes.c_ushort), ("unused1", ctypes.c_ulong),
                ("unused2", ctypes.c_ulong)]


class _shmid_ds(ctypes.Structure):
    _fields_ = [("shm_perm", _ipc_perm), ("shm_segsz", ctypes.c_size_t), ("shm_atime", ctypes.c_long),
                ("shm_dtime", ctypes.c_long), ("shm_ctime", ctypes.c_long), ("shm_cpid", ctypes.c_int),
                ("shm_lpid", ctypes.c_int), ("shm_nattch", ctypes.c_ulong), ("unused4", ctypes.c_ulong),
                ("unused5", ctypes.c_ulong)]


def _check(ret: int, what: str) -> int:
    if ret == -1 or ret is None:
        err = ctypes.get_errno()
        raise RestoreError(f"{what}: {os.strerror(err)}")
    return ret


@dataclass
class SysvObjects:
    """The segments of a restore: which exist, which were created again, and the attach bases done."""

    fill: object = None  # Callable[[str, int (address), int (size)], None]: the stored pages into our attach
    ready: set[int] = field(default_factory=set)
    created: dict[int, mm_pb2.SysvShm] = field(default_factory=dict)

    def ensure(self, seg: mm_pb2.SysvShm) -> None:
        """The segment exists with its old id: as it is, or created again and filled."""
        if seg.shmid in self.ready:
            return
        live = read_segments().get(seg.shmid)
        if live is not None and live.size == seg.size and (live.key == seg.key or live.removed):
            self.ready.add(seg.shmid)
            return
        if live is not None:
            raise RestoreError(f"System V shmid {seg.shmid} is taken by another segment (key {live.key:#x}, "
                               f"{live.size} bytes)", hint="remove it (ipcrm -m) or restore in a new IPC namespace")
        try:
            with open(_NEXT_ID, "w") as f:
                f.write(str(seg.shmid))
        except OSError as exc:
            raise RestoreError(f"cannot ask for shmid {seg.shmid} ({_NEXT_ID}: {exc.strerror})") from exc
        # The kernel sets shm_next_id back to -1 itself once a shmget used it (-1 cannot be written).
        shmid = _check(_shmget(0 if seg.removed else seg.key, seg.size, _IPC_CREAT | _IPC_EXCL | seg.mode),
                       f"shmget of segment {seg.shmid} (shm_next_id stays {seg.shmid} until the next shmget)")
        if shmid != seg.shmid:
            _shmctl(shmid, _IPC_RMID, None)
            raise RestoreError(f"shmget gave shmid {shmid}, not {seg.shmid}")
        self.created[shmid] = seg
        self.ready.add(shmid)
        addr = _shmat(shmid, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise RestoreError(f"cannot attach the recreated segment {shmid}: {os.strerror(ctypes.get_errno())}")
        try:
            if self.fill is not None:
                self.fill(OWNER.format(shmid=shmid), addr, seg.size)  # type: ignore[operator]
        finally:
            _shmdt(addr)
        ds = _shmid_ds()
        _check(_shmctl(shmid, _IPC_STAT, ctypes.byref(ds)), f"IPC_STAT of segment {shmid}")
        ds.shm_perm.uid, ds.shm_perm.gid, ds.shm_perm.mode = seg.uid, seg.gid, seg.mode
        _check(_shmctl(shmid, _IPC_SET, ctypes.byref(ds)), f"IPC_SET of segment {shmid}")

    def attach(self, inj: Injector, v: mm_pb2.Vma, done: set[int], vmas: Sequence[mm_pb2.Vma]) -> None:
        """Map view ``v`` of the process's ``vmas`` in the process of ``inj``: one shmat per attach base, or
        per view of an attach it unmapped in part (see the module doc), then its own protection."""
        base = v.start - v.pgoff
        flags = 0 if "mw" in v.vm_flags.split() else _SHM_RDONLY
        if not _whole(v, vmas):
            span = _rounded(v.sysv.size)
            at = inj.call(NR.shmat, v.sysv.shmid, 0, flags, name=f"shmat({v.sysv.shmid})")
            inj.call(NR.mremap, at + v.pgoff, v.end - v.start, v.end - v.start, MREMAP_MAYMOVE | MREMAP_FIXED,
                     v.start)
            if v.pgoff:
                inj.munmap(at, v.pgoff)
            if v.pgoff + v.end - v.start < span:
                inj.munmap(at + v.pgoff + v.end - v.start, span - v.pgoff - (v.end - v.start))
        elif base not in done:
            got = inj.call(NR.shmat, v.sysv.shmid, base, flags | _SHM_REMAP,
                           name=f"shmat({v.sysv.shmid}, {base:#x})")
            if got != base:
                raise RestoreError(f"shmat placed segment {v.sysv.shmid} at {got:#x}, not {base:#x}")
            done.add(base)
        inj.mprotect(v.start, v.end - v.start, v.prot)

    def abort(self) -> None:
        """A failed restore: remove the segments it created (the ones that existed stay as they were)."""
        for shmid in self.created:
            _shmctl(shmid, _IPC_RMID, None)
        self.created.clear()

    def finish(self) -> None:
        """Remove again the segments that had been removed (they go with their last detach, as before)."""
        for shmid, seg in self.created.items():
            if seg.removed:
                _shmctl(shmid, _IPC_RMID, None)
