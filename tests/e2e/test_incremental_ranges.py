"""Pre-dumps over selected address ranges (``--ranges`` / ``--exclude-ranges``), on scenarios/two_regions.c.

The target has two regions A and B with a known pattern per page and keeps
the generation it last wrote into each page in its .bss (outside both).  Pre-dumps
select A only: they must copy A's pages alone (the first all of them, later ones the
written ones), and the final dump must still be complete — B and the .bss are copied
in full, including pages the parent holds but nobody tracked.  After the restore the
target checks every page of both regions itself (``c`` → PASS).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image.reader import Image
from ckpt.image.records import ImageKind, PageState
from ckpt.track.watch import tracking_state_path
from backends import need_method
from targets import Target, traced_threads, tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pre-dump/restore needs root (ptrace, clone3 set_tid)")

N = 64  # pages per region
PAGE = 4096
UFFD = "anon_inode:[userfaultfd]"
Area = tuple[int, int]


def _start(c_target) -> tuple[Target, Area, Area]:  # noqa: ANN001
    t = c_target("two_regions", str(N), stdin_pipe=True, stderr=subprocess.DEVNULL)
    info = t.ready()
    a, b = int(info["a"], 16), int(info["b"], 16)
    return t, (a, a + N * PAGE), (b, b + N * PAGE)


def _write(t: Target, region: str, first: int, count: int, gen: int) -> None:
    t.write(f"w {region} {first} {count} {gen}\n".encode())
    t.expect("OK")


def _pages(image: Path, pid: int, state: PageState, area: Area | None = None) -> int:
    """Pages of ``pid`` in ``state`` in one image (only those inside ``area`` if given)."""
    pm = Image.open(image).pagemap(pid)
    out = 0
    for r in pm.ranges:
        if r.state is not state:
            continue
        lo, hi = (r.vaddr, r.end(pm.page_size)) if area is None else (max(r.vaddr, area[0]), min(r.end(pm.page_size), area[1]))
        out += max(0, hi - lo) // PAGE
    return out


def _only_in(image: Path, pid: int, area: Area) -> bool:
    pm = Image.open(image).pagemap(pid)
    return bool(pm.ranges) and all(area[0] <= r.vaddr and r.end(pm.page_size) <= area[1] for r in pm.ranges)


def _uffds(pid: int) -> list[int]:
    return [int(fd) for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD]


def _final(t: Target, out: Path, parent: Path) -> object:
    stats = api.dump_delta(t.pid, out, prev_images_dir=parent)
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump: Popen must not wait on the pid again
    assert Image.open(out).kind is ImageKind.INCREMENTAL
    assert api.verify(out).ok
    return stats


def _restore_and_check(image: Path, t: Target, restored: list[int]) -> None:
    r = api.restore(image, inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == t.pid and tracer_of(r.pid) == 0
    t.write(b"c\n")
    assert t.expect("PASS", timeout=10) == "PASS"


@pytest.mark.parametrize("method", ["uffd-wp", "hash", "soft-dirty"])
def test_predump_ranges_chain_restore(c_target, tmp_path: Path, restored: list[int], method: str) -> None:  # noqa: ANN001
    need_method(method)
    t, a, b = _start(c_target)
    first = api.pre_dump(t.pid, tmp_path / "1", track=method, ranges=[a])
    assert first.full and first.method == method and first.notes == ()
    assert first.include == (a,) and first.exclude == ()
    assert (first.pages_stored, first.pages_parent, first.dirty_pages) == (N, 0, N)  # A's pages, nothing else
    assert _only_in(tmp_path / "1", t.pid, a)
    tracking = Image.open(tmp_path / "1").processes[0].tracking
    assert tracking is not None and tracking.include == (a,) and tracking.exclude == ()

    _write(t, "a", 0, 5, 2)
    _write(t, "b", 0, N, 2)  # B is outside the selection: no pre-dump copies it
    second = api.pre_dump(t.pid, tmp_path / "2", prev_images_dir="../1")  # keeps the recorded ranges
    assert not second.full and second.notes == () and second.include == (a,)
    assert (second.pages_stored, second.pages_parent) == (5, N - 5), second
    assert _only_in(tmp_path / "2", t.pid, a)
    assert traced_threads(t.pid, os.getpid()) == []

    _write(t, "a", 10, 3, 3)
    _write(t, "b", 7, 2, 3)
    _final(t, tmp_path / "3", tmp_path / "2")
    final = tmp_path / "3"
    # A: the 3 pages written since 2, the rest from the chain; B: all of it (no parent holds it)
    assert _pages(final, t.pid, PageState.HERE, a) == 3
    assert _pages(final, t.pid, PageState.PARENT, a) == N - 3
    assert _pages(final, t.pid, PageState.HERE, b) == N
    assert _pages(final, t.pid, PageState.PARENT) == N - 3  # nothing outside A is taken from the parent
    _restore_and_check(final, t, restored)


def test_untracked_pages_the_parent_holds_are_copied_again(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A complete image (dump -R --track-mem) holds B, but only A is tracked after it: the next
    delta cannot know whether B was written, so it copies all of B again."""
    t, a, b = _start(c_target)
    api.pre_dump(t.pid, tmp_path / "1", ranges=[a])
    _write(t, "a", 0, 3, 2)
    _write(t, "b", 0, 4, 2)
    api.dump_delta(t.pid, tmp_path / "2", prev_images_dir=tmp_path / "1", track_mem=True, leave_running=True)
    assert _pages(tmp_path / "2", t.pid, PageState.HERE, b) == N  # complete: B copied in full
    assert _pages(tmp_path / "2", t.pid, PageState.HERE, a) == 3
    _write(t, "b", 5, 3, 3)
    _write(t, "a", 1, 1, 3)
    _final(t, tmp_path / "3", tmp_path / "2")
    assert _pages(tmp_path / "3", t.pid, PageState.HERE, b) == N  # held by the parent, but untracked
    assert _pages(tmp_path / "3", t.pid, PageState.HERE, a) == 1  # still tracked: the one written page
    assert _pages(tmp_path / "3", t.pid, PageState.PARENT) == N - 1
    _restore_and_check(tmp_path / "3", t, restored)


def test_other_ranges_give_a_full_copy_of_them(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    need_method("uffd-wp")  # counts parked userfaultfds
    t, a, b = _start(c_target)
    api.pre_dump(t.pid, tmp_path / "1", ranges=[a])
    parked = _uffds(t.pid)
    assert len(parked) == 1
    _write(t, "a", 0, 2, 2)
    _write(t, "b", 0, 2, 2)
    second = api.pre_dump(t.pid, tmp_path / "2", prev_images_dir=tmp_path / "1", ranges=[b])
    assert second.full and second.parent is None and second.include == (b,)
    assert any("differ" in n and "full" in n for n in second.notes), second.notes
    assert second.pages_stored == N and _only_in(tmp_path / "2", t.pid, b)
    assert _uffds(t.pid) == parked  # the parked tracker was taken over, not a second one added
    _write(t, "b", 3, 1, 3)
    third = api.pre_dump(t.pid, tmp_path / "3", prev_images_dir=tmp_path / "2")
    assert not third.full and third.include == (b,) and third.pages_stored == 1, third
    _final(t, tmp_path / "4", tmp_path / "3")
    assert _pages(tmp_path / "4", t.pid, PageState.HERE, a) == N
    _restore_and_check(tmp_path / "4", t, restored)


def _ckpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *args], capture_output=True, text=True, timeout=60,
                          close_fds=True, stdin=subprocess.DEVNULL)


def _hex(area: Area) -> str:
    return f"{area[0]:x}-{area[1]:x}"


def test_cli_exclude_ranges_chain(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, a, b = _start(c_target)
    r = _ckpt("pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "1"), "--exclude-ranges", _hex(b))
    assert r.returncode == 0, r.stderr
    assert "full" in r.stdout and f"all minus {_hex(b)}" in r.stdout, r.stdout
    assert _pages(tmp_path / "1", t.pid, PageState.HERE, a) == N
    assert _pages(tmp_path / "1", t.pid, PageState.HERE, b) == 0
    _write(t, "a", 4, 2, 2)
    _write(t, "b", 4, 2, 2)
    r = _ckpt("pre-dump", "-t", str(t.pid), "-D", str(tmp_path / "2"), "--prev-images-dir", "../1")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "delta" in r.stdout and f"all minus {_hex(b)}" in r.stdout, r.stdout
    assert _pages(tmp_path / "2", t.pid, PageState.HERE, b) == 0
    r = _ckpt("show", str(tmp_path / "2"))
    assert r.returncode == 0 and f"tracked ranges all minus {_hex(b)}" in r.stdout, r.stdout
    _write(t, "b", 9, 1, 3)
    r = _ckpt("dump", "-t", str(t.pid), "-D", str(tmp_path / "3"), "--prev-images-dir", "../2")
    assert r.returncode == 0, r.stderr
    assert t.proc.wait(timeout=10) == -signal.SIGKILL  # ended by the dump; we are its parent: reap it
    assert _pages(tmp_path / "3", t.pid, PageState.HERE, b) == N
    _restore_and_check(tmp_path / "3", t, restored)


def test_cli_bad_ranges_are_one_line_errors(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, a, b = _start(c_target)
    unmapped = "1000-2000"  # page 1: never mapped
    cases = [
        (["--ranges", "zz-1000"], "bad address range"),
        (["--ranges", "1000-1800"], "page-aligned"),
        (["--ranges", ""], "no address range"),
        (["--ranges", f"{b[1]:x}-{a[0]:x}"], "start must be below end"),
        (["--ranges", unmapped], "matches no mapping"),
        (["--ranges", f"{_hex(a)},{unmapped}"], "matches no mapping"),
        (["--exclude-ranges", unmapped], "matches no mapping"),
        (["--ranges", _hex(a), "--exclude-ranges", _hex(a)], "leave nothing"),
        (["--incremental", "--ranges", unmapped], "matches no mapping"),
    ]
    for i, (opts, want) in enumerate(cases):
        out = tmp_path / f"img{i}"
        r = _ckpt("pre-dump", "-t", str(t.pid), "-D", str(out), *opts)
        assert r.returncode == 2, (opts, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ckpt: ") and want in lines[0], (opts, r.stderr)
        assert not out.exists(), opts
    # the target was not touched: no tracker, no state file, not traced, and it runs on
    assert _uffds(t.pid) == [] and not os.path.exists(tracking_state_path(t.pid))
    assert traced_threads(t.pid, os.getpid()) == []
    t.write(b"c\n")
    assert t.expect("PASS") == "PASS"
