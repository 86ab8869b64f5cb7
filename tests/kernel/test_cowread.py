"""SharingReader: reading a forked child's memory leaves the pages it shares with its parent shared."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal

import pytest

from ckpt.kernel import pagemap as pm
from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.kernel.cowread import SharingReader
from ckpt.kernel.libc import libc
from ckpt.kernel.vm import buffer_address, process_vm_readv

NPAGES = 64
OWN = 8  # pages the child writes: its own copies, read with process_vm_readv
MAPPED = NPAGES - 1  # the child unmaps the last page


def _exclusive(pid: int, addr: int, npages: int) -> list[bool]:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        return [pm.pm_exclusive(e) for e in pm.read_pagemap_entries(fd, addr, npages)]
    finally:
        os.close(fd)


@pytest.fixture
def forked():  # noqa: ANN201
    """(child pid, address, the bytes the child sees): a private area the child shares but for OWN pages
    (and its last page, which the child unmaps)."""
    area = mmap.mmap(-1, NPAGES * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(NPAGES):
        area[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = bytes([i + 1]) * PAGE_SIZE
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own copy of the first OWN pages, then wait to be killed
        os.close(r)
        area[:OWN * PAGE_SIZE] = b"\xee" * (OWN * PAGE_SIZE)
        libc.munmap(ctypes.c_void_p(buffer_address(area) + MAPPED * PAGE_SIZE), ctypes.c_size_t(PAGE_SIZE))
        os.write(w, b"x")
        while True:
            signal.pause()
    os.close(w)
    try:
        assert os.read(r, 1) == b"x"
        want = b"\xee" * (OWN * PAGE_SIZE) + bytes(area[OWN * PAGE_SIZE:MAPPED * PAGE_SIZE])
        yield pid, buffer_address(area), want
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        area.close()


def test_read_keeps_shared_pages_shared(forked) -> None:  # noqa: ANN001
    pid, addr, want = forked
    assert _exclusive(pid, addr, MAPPED) == [True] * OWN + [False] * (MAPPED - OWN)
    buf = bytearray(MAPPED * PAGE_SIZE)
    with SharingReader(pid) as r:
        assert r.readinto(addr, memoryview(buf)) == len(buf)
    assert buf == want
    assert _exclusive(pid, addr, MAPPED) == [True] * OWN + [False] * (MAPPED - OWN)


def test_pinned_read_copies(forked) -> None:  # noqa: ANN001
    """Why SharingReader exists: process_vm_readv leaves the child its own copy of each page read (5.19+)."""
    pid, addr, _ = forked
    buf = bytearray(PAGE_SIZE)
    process_vm_readv(pid, [(buffer_address(buf), PAGE_SIZE)], [(addr + OWN * PAGE_SIZE, PAGE_SIZE)])
    assert _exclusive(pid, addr + OWN * PAGE_SIZE, 1) == [True]


def test_read_stops_at_an_unmapped_page(forked) -> None:  # noqa: ANN001
    pid, addr, want = forked
    with SharingReader(pid) as r:
        buf = bytearray(2 * PAGE_SIZE)
        assert r.readinto(addr + (MAPPED - 1) * PAGE_SIZE, memoryview(buf)) == PAGE_SIZE  # the last page, then none
        assert buf[:PAGE_SIZE] == want[-PAGE_SIZE:]
        with pytest.raises(OSError):
            r.readinto(addr + MAPPED * PAGE_SIZE, memoryview(buf))
