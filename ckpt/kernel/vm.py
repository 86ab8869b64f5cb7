"""Cross-process memory access: ``process_vm_readv``/``writev``, ``process_madvise`` and ``/proc/PID/mem``.

``process_vm_readv`` is the fast path (no page-table walk of our own, many
ranges per call) but fails with EFAULT on PROT_NONE and exec-only pages;
``/proc/PID/mem`` forces access and reads/writes those (DESIGN §3).
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
from collections.abc import Sequence
from itertools import chain
from typing import Union

from .arch_x86_64 import NR
from .libc import libc, raise_errno, syscall

__all__ = ["iovec", "IOV_MAX", "process_vm_readv", "process_vm_writev", "process_madvise", "read_memory", "ProcMem", "buffer_address", "pread_exact"]

#: The kernel accepts at most this many iovecs per call (UIO_MAXIOV).
IOV_MAX = 1024

Buffer = Union[bytearray, memoryview, ctypes.Array]  # writable, contiguous


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_process_vm_readv = libc.process_vm_readv
_process_vm_readv.restype = ctypes.c_ssize_t
_process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong,
                              ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong]
_process_vm_writev = libc.process_vm_writev
_process_vm_writev.restype = ctypes.c_ssize_t
_process_vm_writev.argtypes = _process_vm_readv.argtypes


def buffer_address(buf: Buffer) -> int:
    """Address of a writable buffer's first byte (no copy)."""
    if isinstance(buf, ctypes.Array):
        return ctypes.addressof(buf)
    mv = memoryview(buf)
    if mv.readonly:
        raise ValueError("buffer must be writable")
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))


def _transfer(fn, name: str, pid: int, local: Sequence[tuple[int, int]], remote: Sequence[tuple[int, int]]) -> int:
    """Run ``fn`` over (address, length) lists, IOV_MAX at a time; return bytes moved.

    Stops early (returns a short count) when the kernel does a partial transfer,
    which happens at the first remote range that is not accessible.
    """
    total = 0
    li = ri = 0
    # Both lists are consumed in lock-step batches of at most IOV_MAX entries;
    # callers pass one local slice per remote range, so batches line up.
    while li < len(local) and ri < len(remote):
        lb = local[li:li + IOV_MAX]
        rb = remote[ri:ri + IOV_MAX]
        # An iovec is two u64s: an array('Q') of the flattened pairs has its layout, built in C
        # (an iovec object per range cost a delta of 2,600 scattered pages ~2 ms).
        lflat, rflat = array.array("Q", chain.from_iterable(lb)), array.array("Q", chain.from_iterable(rb))
        larr = (iovec * len(lb)).from_buffer(lflat)
        rarr = (iovec * len(rb)).from_buffer(rflat)
        want_l = sum(n for _, n in lb)
        want_r = sum(n for _, n in rb)
        want = min(want_l, want_r)
        ctypes.set_errno(0)
        got = fn(pid, larr, len(lb), rarr, len(rb), 0)
        if got < 0:
            if total:
                return total
            raise_errno(f"{name}(pid={pid}, remote={rb[0][0]:#x})")
        total += got
        if got < want:  # partial transfer: stop at the first inaccessible range
            return total
        li += len(lb)
        ri += len(rb)
    return total


def process_vm_readv(pid: int, local: Sequence[tuple[int, int]], remote: Sequence[tuple[int, int]]) -> int:
    """Read ``remote`` ranges of ``pid`` into ``local`` buffers (addresses); bytes read.

    For exact results give lists of equal total length in matching batches
    (the usual case: one local slice per remote range).
    """
    return _transfer(_process_vm_readv, "process_vm_readv", pid, local, remote)


def process_vm_writev(pid: int, local: Sequence[tuple[int, int]], remote: Sequence[tuple[int, int]]) -> int:
    """Write ``local`` buffers into ``remote`` ranges of ``pid``; bytes written."""
    return _transfer(_process_vm_writev, "process_vm_writev", pid, local, remote)


def process_madvise(pidfd: int, ranges: Sequence[tuple[int, int]], advice: int) -> int:
    """madvise(2) ``advice`` over (address, length) ``ranges`` of the process behind ``pidfd`` (Linux 5.10;
    MADV_COLD, MADV_PAGEOUT, MADV_WILLNEED, MADV_COLLAPSE only); bytes advised.

    Needs CAP_SYS_NICE and PTRACE_MODE_READ over the target.  The kernel stops at
    the first range it cannot advise (a short count); an error before any raises.
    """
    total = 0
    for i in range(0, len(ranges), IOV_MAX):
        batch = ranges[i:i + IOV_MAX]
        flat = array.array("Q", chain.from_iterable(batch))
        vec = (iovec * len(batch)).from_buffer(flat)
        got = syscall(NR.process_madvise, pidfd, ctypes.addressof(vec), len(batch), advice, 0,
                      name=f"process_madvise(advice={advice}, {batch[0][0]:#x}...)")
        total += got
        if got < sum(n for _, n in batch):
            break
    return total


def read_memory(pid: int, addr: int, length: int) -> bytes:
    """Read ``length`` bytes at ``addr`` of ``pid`` (short read raises EFAULT)."""
    buf = bytearray(length)
    got = process_vm_readv(pid, [(buffer_address(buf), length)], [(addr, length)])
    if got != length:
        raise OSError(errno.EFAULT, f"process_vm_readv(pid={pid}, remote={addr:#x}): short read {got}/{length}")
    return bytes(buf)


def pread_exact(fd: int, buf: memoryview, offset: int, what: str) -> None:
    """Fill ``buf`` from ``offset`` of ``fd`` (a /proc file where offset = address); errors name ``what``."""
    done = 0
    while done < len(buf):
        where = f"pread({what}, {offset + done:#x})"
        try:
            n = os.preadv(fd, [buf[done:]], offset + done)
        except OSError as exc:
            raise OSError(exc.errno, f"{where}: {exc.strerror}") from None
        if n <= 0:
            raise OSError(errno.EIO, f"{where}: short read")
        done += n


class ProcMem:
    """``/proc/PID/mem`` opened once; reads and writes any mapped page, even PROT_NONE."""

    def __init__(self, pid: int, writable: bool = False) -> None:
        self.pid = pid
        self.fd = -1
        try:
            self.fd = os.open(f"/proc/{pid}/mem", (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"open(/proc/{pid}/mem): {exc.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "ProcMem":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, addr: int, length: int) -> bytes:
        out = bytearray(length)
        self.readinto(addr, memoryview(out))
        return bytes(out)

    def readinto(self, addr: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``addr``; raises OSError on an unmapped or short range."""
        pread_exact(self.fd, buf, addr, f"/proc/{self.pid}/mem")

    def write(self, addr: int, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            where = f"pwrite(/proc/{self.pid}/mem, {addr + done:#x})"
            try:
                n = os.pwrite(self.fd, mv[done:], addr + done)
            except OSError as exc:
                raise OSError(exc.errno, f"{where}: {exc.strerror}") from None
            if n <= 0:
                raise OSError(errno.EIO, f"{where}: short write")
            done += n
