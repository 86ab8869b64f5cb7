"""Pre-dumps of a process with thousands of mappings whose layout changes between rounds (scenarios/vma_maze.c).

A collection asks the kernel which mappings are not registered and registers
only those, then clears every range with one scan (ckpt/track/uffd_wp.py,
``_collect``) instead of one scan per mapping.  Every kind of layout change a
collection must notice happens between the rounds: mprotect splits and merges,
munmap of a middle page, mremap out of the area and back into a hole, a new
mapping grown by mremap, brk growth, and mmap(MAP_FIXED) over a chunk with the
same protection — a new, unregistered VMA whose /proc/PID/maps line is the old
one's letter for letter, so a diff of maps alone would miss it.  After the
final delta dump the restored process checks every page it owns against the
version it wrote last; one lost write fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.dump import dump
from ckpt.incremental import pre_dump
from ckpt.kernel import uffd
from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.track import open_tracker
from backends import need_method
from targets import Target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pre-dump/restore needs root (ptrace, clone3 set_tid)")

NMAPS, CHUNK = 3000, 2  # 3,000 writable VMAs of 2 pages, rw- and rwx alternating


def _maze(c_target) -> tuple[Target, tuple[int, int]]:  # noqa: ANN001
    t = c_target("vma_maze", str(NMAPS), str(CHUNK), stdin_pipe=True, stderr=subprocess.DEVNULL)
    info = t.ready()
    start = int(info["area"], 16)
    return t, (start, start + int(info["npages"]) * PAGE_SIZE)


def _ask(t: Target, command: bytes, answer: str) -> str:
    t.write(command + b"\n")
    return t.expect(answer)


@pytest.mark.parametrize("method", ["uffd-wp", "soft-dirty", "hash"])
def test_no_write_lost_while_mappings_change(c_target, tmp_path: Path, restored: list[int], method: str) -> None:  # noqa: ANN001
    need_method(method)
    t, _ = _maze(c_target)
    parent: Path | None = None
    for i in range(1, 5):
        if i > 1:
            _ask(t, b"w 20", "OK")  # 2 % of the area's pages
            _ask(t, b"c", "OK")     # one layout change of every kind
        s = pre_dump(t.pid, tmp_path / str(i), parent=parent, method=method)
        assert s.notes == () and s.full == (i == 1), s
        if i > 1:  # only what was written or changed is copied again (a count, not a time)
            assert s.pages_parent > s.pages_stored, s
        parent = tmp_path / str(i)
    _ask(t, b"w 20", "OK")
    _ask(t, b"c", "OK")
    assert _ask(t, b"v", "CHECK").startswith("CHECK PASS")  # the target's own bookkeeping holds before the dump
    final = dump(t.pid, tmp_path / "final", parent=parent)
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump: Popen must not wait on the pid again
    assert final.pages_stored < NMAPS * CHUNK / 2
    r = api.restore(tmp_path / "final", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    line = _ask(t, b"v", "CHECK")  # the restored process compares every page it owns with what it wrote
    assert line.startswith("CHECK PASS"), line


def test_only_changed_mappings_are_registered(c_target, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A collection registers only the mappings the kernel says are not registered — the MAP_FIXED
    replacement (same maps line) among them — and reports each wholly dirty; nothing else."""
    need_method("uffd-wp")
    t, area = _maze(c_target)
    calls: list[tuple[int, int]] = []
    real = uffd.register
    monkeypatch.setattr(uffd, "register", lambda fd, start, length, mode: calls.append((start, length))
                        or real(fd, start, length, mode))
    tracker = open_tracker(t.pid, "uffd-wp")
    try:
        assert len(calls) < 50  # at start: one call per run of touching mappings, not one per mapping
        calls.clear()
        _ask(t, b"w 10", "OK")
        ds = tracker.collect()
        assert calls == [] and ds.new_vmas == ()  # nothing changed: nothing registered
        assert 0 < ds.written_pages <= NMAPS * CHUNK // 50
        maps_before = open(f"/proc/{t.pid}/maps").read()
        _ask(t, b"c", "OK")
        ds = tracker.collect()
        new = {(v.start, v.end) for v in ds.new_vmas}
        assert 0 < len(calls) < 20 and len(new) < 20
        assert all(v.written_pages + v.hole_pages == v.npages for v in ds.new_vmas)  # wholly dirty
        # The chunk replaced by MAP_FIXED has the same maps line as before, yet it is found and registered.
        same_line = {(v.start, v.end) for v in ds.new_vmas if v.start >= area[0] and v.end <= area[1]
                     and f"{v.start:x}-{v.end:x} " in maps_before}
        assert same_line, (new, calls)
        calls.clear()
        ds = tracker.collect()
        assert calls == [] and ds.new_vmas == ()
    finally:
        tracker.stop()
