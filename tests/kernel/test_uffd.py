"""userfaultfd write-protect tracking: in this process, then injected into a target (DESIGN §2)."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from ckpt.control.seize import freeze
from ckpt.kernel import uffd
from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.kernel.pagemap import (
    PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
    pagemap_scan,
)
from ckpt.kernel.pidfd import pidfd_getfd, pidfd_open
from ckpt.kernel.vm import buffer_address

FEATURES = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED


def test_ioctl_numbers_and_kernel_features() -> None:
    assert (uffd.UFFDIO_API, uffd.UFFDIO_REGISTER) == (0xC018AA3F, 0xC020AA00)
    assert (uffd.UFFDIO_UNREGISTER, uffd.UFFDIO_WRITEPROTECT) == (0x8010AA01, 0xC018AA06)
    fd = uffd.userfaultfd()
    try:
        features, ioctls = uffd.uffd_api(fd, 0)  # 0: report everything supported
    finally:
        os.close(fd)
    assert features & FEATURES == FEATURES
    assert ioctls & (1 << uffd._UFFDIO_REGISTER)


def dirty_scan(pm: int, start: int, end: int) -> list[tuple[int, int]]:
    """Get-and-clear the written pages of one registered VMA, as page-index runs."""
    return [((r.start - start) // PAGE_SIZE, (r.end - start) // PAGE_SIZE)
            for r in pagemap_scan(pm, start, end, flags=PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                                  category_mask=PAGE_IS_WRITTEN,
                                  return_mask=PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_PFNZERO)]


def test_tracking_own_memory() -> None:
    npages = 32
    area = mmap.mmap(-1, npages * PAGE_SIZE)
    start = buffer_address(area)
    end = start + npages * PAGE_SIZE
    fd = uffd.userfaultfd()
    pm = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        uffd.uffd_api(fd, FEATURES)
        with pytest.raises(OSError) as again:
            uffd.uffd_api(fd, FEATURES)
        assert again.value.errno == errno.EINVAL and "UFFDIO_API" in str(again.value)
        uffd.register(fd, start, end - start, uffd.UFFDIO_REGISTER_MODE_WP)
        assert dirty_scan(pm, start, end) == [(0, npages)]  # a newly registered VMA reports everything
        assert dirty_scan(pm, start, end) == []
        for p in (3, 4, 20):
            area[p * PAGE_SIZE] = 1
        assert dirty_scan(pm, start, end) == [(3, 5), (20, 21)]
        uffd.writeprotect(fd, start, end - start, 0)  # un-protect: every page writable without a fault
        uffd.unregister(fd, start, end - start)
    finally:
        os.close(pm)
        os.close(fd)
        area.close()


def test_tracking_a_target_through_an_injected_userfaultfd(c_target) -> None:
    npages = 64
    t = c_target("pages", str(npages), stdin_pipe=True)
    info = t.ready()
    start = int(info["area"], 16)
    end = start + npages * PAGE_SIZE
    with freeze(t.pid) as proc:
        inj = proc.injector()
        target_fd = inj.userfaultfd()
        pidfd = pidfd_open(t.pid)
        try:
            fd = pidfd_getfd(pidfd, target_fd)
        finally:
            os.close(pidfd)
        inj.close(target_fd)  # our copy keeps the tracking alive
    assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[userfaultfd]"
    pm = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        uffd.uffd_api(fd, FEATURES)
        uffd.register(fd, start, end - start, uffd.UFFDIO_REGISTER_MODE_WP)
        assert dirty_scan(pm, start, end) == [(0, npages)]
        assert dirty_scan(pm, start, end) == []
        t.write(b"w 1 5 9 10 11 63\n")
        t.expect("OK")
        assert dirty_scan(pm, start, end) == [(1, 2), (5, 6), (9, 12), (63, 64)]
        assert dirty_scan(pm, start, end) == []
        t.write(b"w 5\n")
        t.expect("OK")
        assert dirty_scan(pm, start, end) == [(5, 6)]
    finally:
        os.close(pm)
        os.close(fd)  # the last holder: the kernel unregisters and the target carries on
    t.write(b"w 7\n")
    t.expect("OK")
