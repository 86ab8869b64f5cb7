"""Unit corner cases of the memory records: how a mapping is classified and how its flags are kept."""

from __future__ import annotations

import pytest

from ckpt.errors import Unsupported
from ckpt.image.pb import mm_pb2
from ckpt.kernel.mman import MAP_ANONYMOUS, MAP_DROPPABLE, MAP_HUGETLB, MAP_PRIVATE
from ckpt.procfs.maps import Vma
from ckpt.resources import guards, hugetlb, memory, vmflags

K = mm_pb2.Vma


def _vma(path: str = "", flags: str = "rd wr mr mw me", shared: bool = False, inode: int = 0) -> Vma:
    return Vma(0x10000, 0x20000, True, True, False, shared, 0, 0, 0, inode, path, vmflags=frozenset(flags.split()))


@pytest.mark.parametrize("path", ["/dev/mem", "/sys/devices/pci0000:00/0000:00:02.0/resource0"])
def test_device_memory_is_refused_by_name(path: str) -> None:
    with pytest.raises(Unsupported, match=r"device memory \(VM_IO/VM_PFNMAP\)"):
        memory.classify(_vma(path, "rd wr mr mw me pf io", shared=True, inode=5))


def test_hugetlb_anonymous_memory_is_anonymous() -> None:
    assert memory.classify(_vma(hugetlb.ANON_NAME, "rd wr mr mw me ht", inode=7)) == K.ANON_PRIVATE
    assert memory.classify(_vma(hugetlb.ANON_NAME, "rd wr mr mw me ht sh ms", shared=True, inode=7)) == K.ANON_SHARED


def test_huge_page_size_round_trips_through_the_mmap_flags() -> None:
    for size in (2 << 20, 1 << 30):
        flags = MAP_PRIVATE | MAP_ANONYMOUS | hugetlb.map_flags(size)
        assert flags & MAP_HUGETLB and hugetlb.page_size_in(flags) == size
    assert hugetlb.page_size_in(MAP_PRIVATE | MAP_ANONYMOUS) == 0 and hugetlb.map_flags(0) == 0


def test_droppable_is_a_mapping_type() -> None:
    assert vmflags.map_type({"dp", "wf"}, MAP_PRIVATE | MAP_ANONYMOUS) == MAP_DROPPABLE | MAP_ANONYMOUS
    assert vmflags.map_type({"wf"}, MAP_PRIVATE | MAP_ANONYMOUS) == MAP_PRIVATE | MAP_ANONYMOUS


def test_guard_pages_are_cut_out_of_the_runs_to_read() -> None:
    v = K(start=0x10000, end=0x20000, guards=[0x12000, 0x14000, 0x19000, 0x1A000])
    runs = [(0x10000, 0x20000, False)]
    assert guards.readable_runs(v, runs) == [(0x10000, 0x12000, False), (0x14000, 0x19000, False),
                                             (0x1A000, 0x20000, False)]
    assert guards.guard_runs(v) == [(0x12000, 0x14000), (0x19000, 0x1A000)]
    assert guards.readable_runs(K(start=0x10000, end=0x20000), runs) == runs
