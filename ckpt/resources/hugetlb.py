"""hugetlb memory: huge pages from the pool the host reserved (``/proc/sys/vm/nr_hugepages``).

A hugetlb mapping (VmFlags ``ht``) is a file of a hugetlbfs mount: one of the kernel's own for MAP_HUGETLB
anonymous memory (``/anon_hugepage (deleted)``, private or shared) and for MFD_HUGETLB memfds
(``/memfd:NAME (deleted)``), or a file of a mounted hugetlbfs.  Its page size (smaps ``KernelPageSize``:
2 MiB or 1 GiB on x86-64) is kept in the mapping's mmap flags, as mmap takes it (MAP_HUGETLB with
log2(size) << MAP_HUGE_SHIFT, :func:`map_flags`), and memfd_create with MFD_HUGETLB likewise
(:func:`memfd_flags`).  The pages are read as any other (process_vm_readv, or pread on the object); but
hugetlbfs has no write(): an object's stored bytes go in through a mapping of it in the restorer
(:func:`write_object`).  The restore needs as many free huge pages of that size as the image holds; the
kernel's refusal (ENOMEM) is named.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable

from ..errors import RestoreError
from ..kernel.mman import MAP_HUGETLB
from ..procfs.snapshot import Snapshot

__all__ = ["HUGETLBFS_MAGIC", "MAP_HUGE_SHIFT", "page_size_of", "map_flags", "page_size_in", "memfd_flags",
           "fs_type", "is_hugetlbfs", "write_object", "ANON_NAME", "refusal"]

HUGETLBFS_MAGIC = 0x958458F6  # include/uapi/linux/magic.h
MAP_HUGE_SHIFT = 26           # include/uapi/asm-generic/hugetlb_encode.h (MFD_HUGE_SHIFT too)
_MAP_HUGE_MASK = 0x3F
_libc = ctypes.CDLL(None, use_errno=True)
MFD_HUGETLB = 0x0004
#: The path of MAP_HUGETLB anonymous memory in /proc/PID/maps (a file of the kernel's own hugetlbfs mount).
ANON_NAME = "/anon_hugepage"


def page_size_of(snap: Snapshot, start: int) -> int:
    """KernelPageSize of the mapping of ``snap``'s process that starts at ``start`` (smaps, read in full once)."""
    for e in snap.smaps:
        if e.vma.start == start:
            return e.fields.get("KernelPageSize", 0)
    return 0


def map_flags(page_size: int) -> int:
    """mmap flags for hugetlb memory of ``page_size`` bytes: MAP_HUGETLB with the size's log2."""
    return MAP_HUGETLB | ((page_size.bit_length() - 1) << MAP_HUGE_SHIFT) if page_size else 0


def page_size_in(flags: int) -> int:
    """The huge page size ``flags`` (mmap's, from :func:`map_flags`) name; 0 for no hugetlb."""
    if not flags & MAP_HUGETLB:
        return 0
    shift = (flags >> MAP_HUGE_SHIFT) & _MAP_HUGE_MASK
    return 1 << shift if shift else 0


def memfd_flags(page_size: int) -> int:
    """memfd_create flags for a hugetlb memfd of ``page_size`` bytes (0: an ordinary memfd)."""
    return MFD_HUGETLB | ((page_size.bit_length() - 1) << MAP_HUGE_SHIFT) if page_size else 0


def fs_type(fd: int) -> int:
    """fstatfs's f_type of the file ``fd`` (its filesystem's magic), which os.statvfs does not give."""
    buf = (ctypes.c_long * 16)()  # struct statfs: f_type first
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "fstatfs")
    return buf[0]


def is_hugetlbfs(fd: int) -> bool:
    """``fd`` is a file of a hugetlbfs."""
    return fs_type(fd) == HUGETLBFS_MAGIC


def write_object(fd: int, pages: Iterable[tuple[int, bytes]]) -> None:
    """Write (offset, bytes) pieces into the file ``fd``: pwrite, or for hugetlbfs, which has no write(),
    through a shared mapping of the whole file (its size is whole huge pages).  The object's huge pages were
    reserved when the restored process mapped it shared: the mapping's faults find them."""
    if not is_hugetlbfs(fd):
        for offset, data in pages:
            os.pwrite(fd, data, offset)
        return
    size = os.fstat(fd).st_size
    if not size:
        return
    try:
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise refusal(exc, size) from exc
    try:
        for offset, data in pages:
            n = min(len(data), size - offset)
            if n > 0:
                m[offset:offset + n] = data[:n]
    finally:
        m.close()


def refusal(exc: OSError, size: int) -> RestoreError:
    """The error for hugetlb memory the kernel would not give (ENOMEM: too few free huge pages)."""
    return RestoreError(f"hugetlb memory of {size} bytes could not be had: {exc.strerror}",
                        hint="reserve huge pages first: /proc/sys/vm/nr_hugepages (HugePages_Free in /proc/meminfo)")
