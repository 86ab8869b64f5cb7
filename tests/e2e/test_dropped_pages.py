"""Pages dropped between checkpoints (MADV_DONTNEED, of small pages and of a THP) lose no write in a chain.

Where a dirty bit lives in a pte or a huge PMD, dropping the page drops the bit:
kernels without commits 07b4377bdbe7 / 40de8160ca7f report such a page as clean
on PAGEMAP_SCAN's generic path, and soft-dirty never sees a dropped page that is
then only read (it maps the zero page, bit clear).  Each back-end (uffd-wp,
soft-dirty, hash) × each page listing (PAGEMAP_SCAN, pagemap reads) runs the
same chain — full pre-dump, drop + write / drop + read, delta pre-dump, one more
write, final delta dump — and the restored process must see every page as the
original did.  Back-ends a kernel lacks are skipped (``make test-kernels`` runs
this file in the 6.1 and 6.12 guests).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import warnings
from pathlib import Path

import pytest

from ckpt import api
from ckpt.dump import dump
from ckpt.incremental import pre_dump
from ckpt.kernel.vm import read_memory
from backends import LISTINGS, METHODS, listing, need_method

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pre-dump/restore needs root (ptrace, clone3 set_tid)")

P = 4096
HUGE_PAGES = 512


def _values(pid: int, addr: int, npages: int) -> list[int]:
    data = read_memory(pid, addr, npages * P)
    return [struct.unpack_from("<Q", data, i * P)[0] for i in range(npages)]


def _expected_a() -> list[int]:
    want = [1] * 64
    want[10:20] = [0] * 10
    want[12] = 2
    want[30] = 3
    want[40:42] = [0, 0]
    return want


@pytest.mark.parametrize("how", LISTINGS)
@pytest.mark.parametrize("method", METHODS)
def test_dropped_pages_in_a_chain(py_target, tmp_path: Path, restored: list[int], monkeypatch: pytest.MonkeyPatch,
                                  method: str, how: str) -> None:  # noqa: ANN001
    with listing(how, monkeypatch):
        need_method(method)
        t = py_target("py_zap.py", stdin_pipe=True, stderr=subprocess.DEVNULL)
        info = t.ready()
        a, h, z = (int(info[k], 16) for k in "ahz")
        if info["thp"] != "1":
            warnings.warn("the huge areas are not THPs here: the THP zap is a small-page zap on this machine")
        first = pre_dump(t.pid, tmp_path / "1", method=method)
        assert first.full and first.method == method
        t.write(b"zap\n")
        t.expect("OK")
        second = pre_dump(t.pid, tmp_path / "2", parent=tmp_path / "1", method=method)
        assert not second.full, second.notes  # a delta: the drops must be in it, not in a full copy
        t.write(b"touch\n")
        t.expect("OK")
        before = (_values(t.pid, a, 64), _values(t.pid, h, HUGE_PAGES), _values(t.pid, z, HUGE_PAGES))
        assert before[0] == _expected_a()  # the target itself sees what the test expects
        dump(t.pid, tmp_path / "3", parent=tmp_path / "2", track_method=method)
        t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
        pid = api.restore(tmp_path / "3", inherit_fds=t.stdio_fds).pid
        restored.append(pid)
        after = (_values(pid, a, 64), _values(pid, h, HUGE_PAGES), _values(pid, z, HUGE_PAGES))
    assert after[0] == before[0]
    assert after[1] == before[1] == [2 if i == 5 else 0 for i in range(HUGE_PAGES)]
    assert after[2] == before[2] == [0] * HUGE_PAGES
