"""Pre-dumps, delta chains, stores and merge on a real busy writer (scenarios/writer.c).

The writer stamps a never-repeating version into every page it writes (the
global counter lives in its own memory) while a churn thread maps, unmaps,
moves and grows regions.  The ground truth is read while the final dump holds
the target frozen; after the restore every page must carry that version — or
one *newer* than every version of the truth (written after the restore, since
the restored counter continues from the frozen one).  A page with an older
version is a write the chain missed: the test fails on any.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckpt import api
from ckpt.control.seize import freeze
from ckpt.dump import dump, restore
from ckpt.errors import CkptError
from ckpt.image.reader import Image
from ckpt.image.records import ImageKind
from ckpt.incremental import pre_dump
from backends import need_method
from targets import Target, traced_threads, tracer_of

sys.path.insert(0, str(Path(__file__).parent.parent / "kernel"))
from writer_check import read_versions, snapshot  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pre-dump/restore needs root (ptrace, clone3 set_tid)")

NPAGES, THREADS, RATE = 4096, 2, 2000  # writes per second per thread


def _writer(c_target) -> tuple[Target, tuple[int, int]]:  # noqa: ANN001
    t = c_target("writer", str(NPAGES), str(THREADS), str(RATE), "1", stdin_pipe=True, stderr=subprocess.DEVNULL)
    info = t.ready()
    start = int(info["area"], 16)
    return t, (start, start + NPAGES * 4096)


def _final_dump(t: Target, area: tuple[int, int], out: Path, parent: Path | None) -> tuple[dict[int, int], object]:
    """Final frozen dump (a delta of ``parent``); returns the versions read while frozen, and the stats."""
    truth: dict[int, int] = {}

    def hook(ev: object) -> None:
        if getattr(ev, "phase", ev) == "records" and not truth:
            truth.update(read_versions(t.pid, area))

    stats = dump(t.pid, out, parent=parent, progress=hook)
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump: Popen must not wait on the pid again
    assert truth
    return truth, stats


def _check_restored(image: Path, t: Target, area: tuple[int, int], truth: dict[int, int], restored: list[int]) -> int:
    """Restore and compare every page with the truth; returns the number of pages checked."""
    r = api.restore(image, inherit_fds=t.stdio_fds)  # the API: -D STORE resolves to the newest
    restored.append(r.pid)
    return _check_pages(r.pid, area, truth)


def _check_pages(pid: int, area: tuple[int, int], truth: dict[int, int]) -> int:
    """Compare every page of the restored writer ``pid`` with the truth; returns the number of pages checked."""
    assert tracer_of(pid) == 0
    now = snapshot(pid, area)
    newest = max(truth.values())
    misses = [a for a, v in truth.items() if now.get(a, v if not area[0] <= a < area[1] else -1) not in (v,)
              and not now.get(a, 0) > newest]
    assert misses == [], f"{len(misses)} pages lost a write (first {[hex(a) for a in misses[:5]]})"
    same = sum(1 for a, v in truth.items() if now.get(a) == v)
    assert same > len(truth) * 0.8  # most pages are untouched in the few ms after the restore
    return len(truth)


def _kill_restored(restored: list[int]) -> None:
    for pid in restored:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    restored.clear()


@pytest.mark.parametrize("method,pause", [("uffd-wp", 0.2), ("uffd-wp", 0.0), ("hash", 0.2), ("soft-dirty", 0.2),
                                          ("soft-dirty", 0.0)],
                         ids=["uffd-paused", "uffd-back-to-back", "hash", "soft-dirty-paused", "soft-dirty-back-to-back"])
def test_predump_chain_restore(c_target, tmp_path: Path, restored: list[int], method: str, pause: float) -> None:  # noqa: ANN001
    need_method(method)
    t, area = _writer(c_target)
    parent: Path | None = None
    stats = []
    started: list[float] = []  # when each pre-dump began: what it copies was written since the one before began
    for i in range(1, 6):
        if i == 3:
            t.write(b"t\n")  # a new writer thread (new stack VMA) between two pre-dumps
            t.expect("OK")
        started.append(time.monotonic())
        s = pre_dump(t.pid, tmp_path / str(i), parent=parent, method=method)
        assert s.method == method and s.notes == ()
        stats.append(s)
        parent = tmp_path / str(i)
        assert traced_threads(t.pid, os.getpid()) == []
        time.sleep(pause)
    assert stats[0].full and stats[0].pages_stored >= NPAGES
    # uffd-wp stops the target only to inject and park its userfaultfd; hash and deltas never do
    # (soft-dirty freezes it for each get+clear, which is not counted as tracker set-up)
    assert (stats[0].frozen_seconds > 0) == (method == "uffd-wp")
    assert all(s.frozen_seconds == 0 for s in stats[1:])
    def written(since: float, until: float) -> float:
        """Pages the writers can have written meanwhile, generously (+ the new thread, churn and stacks):
        measured intervals, not assumed ones, so a loaded machine widens the bound instead of failing."""
        return 1.5 * (THREADS + 1) * RATE * (until - since) + 400

    for i, s in enumerate(stats[1:], 1):
        assert not s.full and s.parent is not None and s.pages_parent > 0
        end = started[i + 1] if i + 1 < len(started) else time.monotonic()
        assert s.pages_stored <= written(started[i - 1], end), s  # only what was written is copied again
    t_last = started[-1]
    truth, final = _final_dump(t, area, tmp_path / "final", parent)
    assert Image.open(tmp_path / "final").kind is ImageKind.INCREMENTAL
    assert final.pages_stored <= written(t_last, time.monotonic()), final
    assert api.verify(tmp_path / "final").ok
    _check_restored(tmp_path / "final", t, area, truth, restored)
    _kill_restored(restored)
    if method == "hash" or pause == 0.0:
        return
    # merge squashes the chain: the merged image alone restores the same memory
    m = api.merge(tmp_path / "final", tmp_path / "merged")
    assert len(m.images) == 6 and Image.open(tmp_path / "merged").parent is None
    _check_restored(tmp_path / "merged", t, area, truth, restored)
    _kill_restored(restored)
    # a missing or corrupt middle image is a clear error, never a wrong restore
    pages = tmp_path / "3" / "pages-{}.img".format(t.pid)
    data = bytearray(pages.read_bytes())
    data[-100] ^= 0xFF
    pages.write_bytes(bytes(data))
    assert not api.verify(tmp_path / "final").ok
    shutil.rmtree(tmp_path / "3")
    report = api.verify(tmp_path / "final")
    assert not report.ok and any("missing" in str(p) for p in report.problems)
    with pytest.raises(CkptError, match="missing"):
        restore(tmp_path / "final", inherit_fds=t.stdio_fds)


def test_tracking_lost_gives_full_predump(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    need_method("uffd-wp")
    t, _ = _writer(c_target)
    first = pre_dump(t.pid, tmp_path / "1")
    info = Image.open(tmp_path / "1").processes[0].tracking
    assert info is not None and info.method == "uffd-wp" and info.parked_fd > 2
    with freeze(t.pid) as proc:  # the target closes the parked fd (as a daemonizing close-all would)
        proc.injector().close(info.parked_fd)
    second = pre_dump(t.pid, tmp_path / "2", parent=tmp_path / "1")
    assert second.full and second.parent is None and second.pages_stored >= NPAGES
    assert any("closed" in n and "full" in n for n in second.notes), second.notes
    third = pre_dump(t.pid, tmp_path / "3", parent=tmp_path / "2")
    assert not third.full and third.pages_parent > NPAGES // 2
    api.track_stop(t.pid)  # ends tracking left by a pre-dump
    assert not [fd for fd in os.listdir(f"/proc/{t.pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{t.pid}/fd/{fd}")]
    assert first.full


def _ckpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckpt.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_separate_invocations_and_store(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, area = _writer(c_target)
    prev: list[str] = []
    for i in (1, 2, 3):
        r = _ckpt("pre-dump", "-t", str(t.pid), "-D", str(tmp_path / f"p{i}"), *prev)
        assert r.returncode == 0, r.stderr
        assert ("full" if i == 1 else "delta") in r.stdout, r.stdout
        prev = ["--prev-images-dir", str(tmp_path / f"p{i}")]
    # the parked userfaultfd is ckpt's, not the target's: the final image must not list it
    truth, final = _final_dump(t, area, tmp_path / "final", tmp_path / "p3")
    fds = [e.fd for e in Image.open(tmp_path / "final").fds(t.pid)]
    assert sorted(fds) == [0, 1, 2], fds
    r = _ckpt("show", str(tmp_path / "final"))
    assert r.returncode == 0 and "in parent" in r.stdout
    _check_restored(tmp_path / "final", t, area, truth, restored)
    assert not [fd for fd in os.listdir(f"/proc/{t.pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{t.pid}/fd/{fd}")]


@pytest.mark.parametrize("method", [None, "soft-dirty"], ids=["default", "soft-dirty"])
def test_incremental_store(c_target, tmp_path: Path, restored: list[int], method: str | None) -> None:  # noqa: ANN001
    if method:
        need_method(method)
    track = ["--track", method] if method else []
    t, area = _writer(c_target)
    store = tmp_path / "store"
    for n in (1, 2):
        r = _ckpt("pre-dump", "--incremental", *track, "-t", str(t.pid), "-D", str(store))
        assert r.returncode == 0, r.stderr
    assert Image.open(store / "2").parent is not None
    r = _ckpt("dump", "--incremental", *track, "-R", "-t", str(t.pid), "-D", str(store))  # 3: delta, tracking kept
    assert r.returncode == 0, r.stderr
    assert Image.open(store / "3").kind is ImageKind.INCREMENTAL
    tracking = Image.open(store / "3").processes[0].tracking
    assert tracking is not None and (method is None or tracking.method == method)
    if method == "soft-dirty":
        assert tracking.layout  # the VMAs at the clear, for the next delta
    truth, _ = _final_dump(t, area, store / "4", store / "3")
    assert api.resolve_image_dir(store) == str(store / "4")
    _check_restored(store, t, area, truth, restored)  # -D STORE = the newest


@pytest.mark.parametrize("method", ["uffd-wp", "soft-dirty"])
def test_branch_from_an_older_parent_is_a_full_predump(c_target, tmp_path: Path, restored: list[int],  # noqa: ANN001
                                                       method: str) -> None:
    """uffd-wp and soft-dirty keep one clear-state per process: after 1 → 2, a pre-dump from 1 again
    would miss the writes between 1 and 2.  It must become a full copy with a warning, and restore
    every write."""
    need_method(method)
    t, area = _writer(c_target)
    pre_dump(t.pid, tmp_path / "1", method=method)
    time.sleep(0.1)
    assert not pre_dump(t.pid, tmp_path / "2", parent=tmp_path / "1", method=method).full
    time.sleep(0.1)
    branch = pre_dump(t.pid, tmp_path / "2b", parent=tmp_path / "1", method=method)
    assert branch.full and branch.parent is None and branch.pages_stored >= NPAGES
    assert any("moved on" in n for n in branch.notes), branch.notes
    # the branch is now the tip: a delta from it is a delta again, and the chain restores every write
    time.sleep(0.1)
    assert not pre_dump(t.pid, tmp_path / "3", parent=tmp_path / "2b", method=method).full
    truth, _ = _final_dump(t, area, tmp_path / "final", tmp_path / "3")
    _check_restored(tmp_path / "final", t, area, truth, restored)
