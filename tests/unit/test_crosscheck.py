"""ckpt/resources/crosscheck.py: injected answers the kernel's own view denies refuse the dump.

The answers are made up here (what a target that could shape ckpt's calls would make them say); the
kernel's view is real: this process's maps, and a child that set PR_SET_THP_DISABLE or runs as nobody.
"""

from __future__ import annotations

import os
import subprocess
import time
import sys

import pytest

from ckpt.errors import TargetError
from ckpt.image.pb import process_pb2
from ckpt.procfs.maps import Vma, read_maps
from ckpt.procfs.stat import read_stat
from ckpt.resources import crosscheck

PAGE = 4096


def _anon(start: int, end: int, path: str = "") -> Vma:
    return Vma(start, end, True, True, False, False, 0, 0, 0, 0, path)


def test_brk_of_this_process_agrees_with_its_maps() -> None:
    pid = os.getpid()
    vmas = read_maps(pid)
    heap = next(v for v in vmas if v.path == "[heap]")
    crosscheck.check_brk(pid, heap.end, read_stat(pid).start_brk, vmas)
    with pytest.raises(TargetError, match=r"brk\(0\)"):  # a brk past the heap's end would name the VMA above
        crosscheck.check_brk(pid, heap.start - PAGE, read_stat(pid).start_brk, vmas)


def test_brk_lies_are_told_by_which_vma_is_the_heap() -> None:
    start_brk = 0x1000000
    vmas = [_anon(start_brk, start_brk + 4 * PAGE, "[heap]"), _anon(start_brk + 16 * PAGE, start_brk + 17 * PAGE)]
    crosscheck.check_brk(1, start_brk + 3 * PAGE + 5, start_brk, vmas)
    with pytest.raises(TargetError, match="but maps calls 0x1010000-0x1011000 not \\[heap\\]"):
        crosscheck.check_brk(1, start_brk + 16 * PAGE, start_brk, vmas)
    with pytest.raises(TargetError, match="below start_brk"):
        crosscheck.check_brk(1, start_brk - PAGE, start_brk, vmas)
    crosscheck.check_brk(1, start_brk, start_brk, [_anon(start_brk + PAGE, start_brk + 2 * PAGE)])  # no heap yet
    with pytest.raises(TargetError, match="answered 0xffffff, but maps calls 0x1000000-0x1004000 \\[heap\\]"):
        crosscheck.check_brk(1, start_brk - 1, start_brk - 1, vmas[:1])  # a heap above what brk claims


def _child(code: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", code + "\nimport sys; sys.stdout.write('ok\\n'); sys.stdout.flush()"
                          "\nsys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ok\n"
    return p


def _entry(euid: int, *, dumpable: int, thp_disabled: bool) -> process_pb2.ProcessEntry:
    e = process_pb2.ProcessEntry(creds=process_pb2.Creds(euid=euid))
    e.flags.dumpable, e.flags.thp_disabled = dumpable, thp_disabled
    return e


def test_thp_disable_the_status_shows_cannot_be_denied() -> None:
    p = _child("import ctypes; ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)")  # PR_SET_THP_DISABLE
    try:
        crosscheck.check_flags(p.pid, _entry(0, dumpable=1, thp_disabled=True))
        with pytest.raises(TargetError, match=r"PR_GET_THP_DISABLE\) answered 0, but /proc status shows THP_enabled: 0"):
            crosscheck.check_flags(p.pid, _entry(0, dumpable=1, thp_disabled=False))
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a child as nobody")
def test_dumpable_is_told_by_the_owner_of_proc_pid() -> None:
    nobody = 65534

    def become() -> None:
        os.setgid(nobody)
        os.setuid(nobody)

    p = subprocess.Popen(["sleep", "1000"], preexec_fn=become)
    try:
        while os.stat(f"/proc/{p.pid}/status").st_uid != nobody or open(f"/proc/{p.pid}/comm").read() != "sleep\n":
            time.sleep(0.01)  # until it has exec'ed as nobody
        crosscheck.check_flags(p.pid, _entry(nobody, dumpable=1, thp_disabled=False))
        with pytest.raises(TargetError, match=rf"PR_GET_DUMPABLE\) answered 0, but /proc/{p.pid}/status is owned by uid {nobody}"):
            crosscheck.check_flags(p.pid, _entry(nobody, dumpable=0, thp_disabled=False))
    finally:
        p.kill()
        p.wait()
