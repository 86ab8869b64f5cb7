"""Cross-process memory: process_vm_readv/writev (many iovecs) and /proc/PID/mem (PROT_NONE)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from ckpt.control.seize import freeze
from ckpt.kernel import vm
from ckpt.kernel.arch_x86_64 import PAGE_SIZE


def expected_page(p: int) -> bytes:
    return bytes([(p * 7 + 1) & 0xFF]) * PAGE_SIZE


def test_readv_with_more_iovecs_than_iov_max(c_target) -> None:
    t = c_target("spin")
    info = t.ready()
    base, npages = int(info["pattern"], 16), int(info["npages"])
    piece = 64  # 64 pieces per page: 4,096 iovecs, four kernel calls
    buf = bytearray(npages * PAGE_SIZE)
    local_base = vm.buffer_address(buf)
    n = npages * PAGE_SIZE // piece
    assert n > vm.IOV_MAX
    # Read the pieces of each page in reverse order, to see every iovec land in its place.
    remote = [(base + i * piece, piece) for i in range(n)]
    local = [(local_base + (n - 1 - i) * piece, piece) for i in range(n)]
    assert vm.process_vm_readv(t.pid, local, remote) == len(buf)
    flipped = b"".join(bytes(buf[i * piece:(i + 1) * piece]) for i in reversed(range(n)))
    assert flipped == b"".join(expected_page(p) for p in range(npages))


def test_writev_round_trip(c_target) -> None:
    t = c_target("spin")
    info = t.ready()
    addr = int(info["pattern"], 16) + 5 * PAGE_SIZE
    with freeze(t.pid):
        original = vm.read_memory(t.pid, addr, PAGE_SIZE)
        data = bytearray(b"\xee" * PAGE_SIZE)
        assert vm.process_vm_writev(t.pid, [(vm.buffer_address(data), PAGE_SIZE)], [(addr, PAGE_SIZE)]) == PAGE_SIZE
        assert vm.read_memory(t.pid, addr, PAGE_SIZE) == bytes(data)
        back = bytearray(original)
        vm.process_vm_writev(t.pid, [(vm.buffer_address(back), PAGE_SIZE)], [(addr, PAGE_SIZE)])
    os.kill(t.pid, signal.SIGUSR1)
    t.expect("PASS")


def test_prot_none_page_needs_proc_mem(c_target) -> None:
    t = c_target("spin")
    addr = int(t.ready()["protnone"], 16)
    with pytest.raises(OSError) as exc:
        vm.read_memory(t.pid, addr, PAGE_SIZE)
    assert exc.value.errno == errno.EFAULT and "process_vm_readv" in str(exc.value)
    with vm.ProcMem(t.pid, writable=True) as mem:
        assert mem.read(addr, PAGE_SIZE) == b"\x5a" * PAGE_SIZE
        mem.write(addr + 100, b"forced")
        assert mem.read(addr + 98, 10) == b"\x5a\x5aforced\x5a\x5a"
        mem.write(addr + 100, b"\x5a" * 6)


def test_proc_mem_error_names_the_file(c_target) -> None:
    t = c_target("spin")
    t.ready()
    with vm.ProcMem(t.pid) as mem:
        with pytest.raises(OSError) as exc:
            mem.read(PAGE_SIZE, 8)  # nothing is mapped at 4096
    assert f"/proc/{t.pid}/mem" in str(exc.value)
