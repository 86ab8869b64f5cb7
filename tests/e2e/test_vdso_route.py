"""A restore on a kernel with another vDSO (ckpt/resources/vdso.py), tried on this one.

Another kernel's vDSO cannot be had on this host but through a guest (tests/kernels/: the real
migrations between 6.18 and 6.12).  Here ``CKPT_DISABLE=same_vdso`` makes the restore take this
kernel's vDSO for another one's, so it goes the whole way of a cross-kernel restore: this kernel's
areas where they fit, a proxy of the image's vDSO at its address with every function jumping to the
new one, AT_SYSINFO_EHDR moved.  The target (scenarios/vdso_clock.c) has threads calling the vDSO
through glibc's cached pointers all the time, one without a pause (the dump catches it inside the
vDSO most of the time: the freeze lets it out first), and checks every answer.
"""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest

from ckpt import api, features
from ckpt.image.reader import Image
from ckpt.procfs.auxv import AT
from ckpt.procfs.maps import read_maps
from ckpt.resources import vdso
from targets import Target
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restore needs root (ptrace, clone3 set_tid)")


def _check(t: Target) -> dict[str, str]:
    os.kill(t.pid, signal.SIGUSR1)
    line = t.expect("CHECK PASS")
    return dict(p.split("=", 1) for p in line.split()[2:])


def _areas(pid: int) -> dict[str, tuple[int, int]]:
    return {v.path: (v.start, v.end) for v in read_maps(pid) if v.path in ("[vvar]", "[vvar_vclock]", "[vdso]")}


def _sysinfo_ehdr(pid: int) -> int:
    with open(f"/proc/{pid}/auxv", "rb") as f:
        raw = f.read()
    pairs = dict(struct.iter_unpack("=QQ", raw))
    return pairs[AT.SYSINFO_EHDR]


@pytest.mark.parametrize("route", [False, True], ids=["same", "routed"])
def test_vdso_callers_keep_working(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                   monkeypatch: pytest.MonkeyPatch, route: bool) -> None:
    t = c_target("vdso_clock", "3", "1")
    t.ready()
    first = _check(t)
    old = _areas(t.pid)
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    image = Image.open(tmp_path / "img")
    mm, _ = image.mm(t.pid)
    assert mm.vdso and len(mm.vdso) == old["[vdso]"][1] - old["[vdso]"][0]  # the dump keeps the vDSO's bytes
    lo, hi = old["[vdso]"]  # the spinning thread was let out of the vDSO before the dump (control/seize.py)
    assert not [c.tid for c in image.threads(t.pid) if lo <= c.regs.rip < hi]
    if route:
        monkeypatch.setenv(features.DISABLE_ENV, "same_vdso")
    features.disabled.cache_clear()  # read once per process
    try:
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    finally:
        monkeypatch.delenv(features.DISABLE_ENV, raising=False)
        features.disabled.cache_clear()
    restored.append(r.pid)
    after = _check(t)
    assert int(after["calls"]) > int(first["calls"]) and int(after["round"]) == int(first["round"]) + 1
    now = _areas(t.pid)
    maps = {v.start: v for v in read_maps(t.pid)}
    if not route:  # the same kernel: everything where it was, no proxy
        assert now == old and _sysinfo_ehdr(t.pid) == old["[vdso]"][0]
        return
    start, end = old["[vdso]"]
    proxy = maps[start]
    assert proxy.path == "" and proxy.end == end and proxy.prot == 5  # private r-x copy at the old address
    assert now["[vdso]"] != old["[vdso]"] and _sysinfo_ehdr(t.pid) == now["[vdso]"][0]
    spans = [(s, e) for s, e in now.values()]
    assert not any(s < end and start < e for s, e in spans)
    with open(f"/proc/{t.pid}/mem", "rb") as f:
        f.seek(start)
        copy = f.read(end - start)
    routes = vdso.plan(bytes(mm.vdso), bytes(mm.vdso), start, now["[vdso]"][0])
    assert copy == vdso.proxy_bytes(bytes(mm.vdso), routes)  # the old vDSO, its functions jumping to the new one
    for _ in range(3):  # and the threads keep calling through it, answers checked
        _check(t)


def _check_pid(t: Target, pid: int) -> str:
    """SIGUSR1 to one process of the tree: its own CHECK PASS line (a line of the other is skipped)."""
    os.kill(pid, signal.SIGUSR1)
    while True:
        line = t.expect("CHECK PASS")
        if line.endswith(f"pid={pid}"):
            return line


def test_routed_tree(c_target, tmp_path: Path, restored: list[int], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A parent and its child, both calling the vDSO: each helper of the tree gets its own proxy, the
    child's cloned from the parent's (which holds this kernel's areas, moved, and no proxy yet)."""
    t = c_target("vdso_clock", "2", "1", "tree")
    pids = sorted({int(t.ready()["pid"]), int(t.ready()["pid"])})
    assert len(pids) == 2 and t.pid in pids
    restored.extend(pids)  # both killed after the test, whatever happens (the child is not the pool's)
    for pid in pids:
        _check_pid(t, pid)
    old = _areas(t.pid)
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    monkeypatch.setenv(features.DISABLE_ENV, "same_vdso")
    features.disabled.cache_clear()
    try:
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    finally:
        monkeypatch.delenv(features.DISABLE_ENV, raising=False)
        features.disabled.cache_clear()
    for pid in pids:
        start, end = old["[vdso]"]
        proxy = {v.start: v for v in read_maps(pid)}[start]
        assert proxy.path == "" and proxy.end == end and _areas(pid)["[vdso]"][0] != start
        assert _sysinfo_ehdr(pid) == _areas(pid)["[vdso]"][0]
        for _ in range(2):
            _check_pid(t, pid)
