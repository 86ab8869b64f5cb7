"""uffd-wp tracker against real processes: no missed write under churn, park/re-attach, loss detection."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time

import pytest

from ckpt.errors import TargetGone
from ckpt.kernel.arch_x86_64 import PAGE_SIZE
from ckpt.kernel.vm import buffer_address
from ckpt.track import RangeSpec, TrackingLost, WriteWatch, open_tracker
from ckpt.track.base import TrackingState
from ckpt.track.uffd_wp import UffdWpTracker, find_userfaultfds

from .writer_check import Tally, check_iteration, final_shadow_check, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_writer(c_target, npages: int = 2048, threads: int = 3, rate: int = 20000, churn: int = 1):
    t = c_target("writer", str(npages), str(threads), str(rate), str(churn), stdin_pipe=True)
    info = t.ready()
    start = int(info["area"], 16)
    return t, (start, start + npages * PAGE_SIZE)


def run_iterations(tracker, t, area, n: int, pause: float = 0.05, new_thread_at: int = 3) -> Tally:
    tally = Tally()
    before = snapshot(t.pid, area)
    shadow = dict(before)  # the base image: a full copy taken after start()
    for k in range(n):
        if k == new_thread_at:
            t.write(b"t\n")
            t.expect("OK")
        time.sleep(pause)
        before = check_iteration(tracker, t.pid, area, before, tally, shadow)
    final_shadow_check(tracker, t.pid, area, tally, shadow)
    return tally


def test_never_misses_a_write_under_threads_and_churn(c_target) -> None:
    t, area = start_writer(c_target)
    tracker = open_tracker(t.pid, "uffd-wp")
    try:
        tally = run_iterations(tracker, t, area, 12)
    finally:
        tracker.stop()
    print(f"uffd-wp: {tally}")
    assert tally.misses == [] and tally.shadow_misses == 0
    assert tally.changed > 500 and tally.reported >= tally.changed
    assert tally.new_vmas > 0  # churn mappings, brk growth, the new thread's stack
    assert t.alive() and find_userfaultfds(t.pid) == {}


def test_park_and_reattach_in_another_process(c_target, tmp_path) -> None:
    """Three separate Python processes hand tracking over; the writes in between are all seen."""
    t, area = start_writer(c_target, churn=0)
    tracker = open_tracker(t.pid, "uffd-wp")
    state = tracker.detach()
    assert find_userfaultfds(t.pid) == {state.parked_fd: state.uffd_inode}
    assert state.parked_fd == 1023  # the highest allowed by PARK_FD_HIGHEST under the default limit
    path = tmp_path / "state.json"
    state.save(path)
    time.sleep(0.1)
    code = (
        "import sys, json; from ckpt.track import open_tracker; from ckpt.track.base import TrackingState\n"
        "s = TrackingState.load(sys.argv[1]); tr = open_tracker(s.pid, state=s); d = tr.collect()\n"
        "print(json.dumps(sorted(d.pages()))); tr.detach()\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode == 0, res.stderr
    dirty = set(__import__("json").loads(res.stdout))
    assert len(dirty) > 100  # the writes of the 0.1 s while nobody but the target held the fd
    # A second re-attach here sees only writes since the child's collect.
    tracker2 = open_tracker(t.pid, state=TrackingState.load(path))
    try:
        tally = Tally()
        b = snapshot(t.pid, area)
        shadow = dict(b)
        for _ in range(3):
            time.sleep(0.05)
            b = check_iteration(tracker2, t.pid, area, b, tally, shadow)
        assert tally.misses == [] and tally.changed > 100
    finally:
        tracker2.stop()
    assert find_userfaultfds(t.pid) == {} and t.alive()


def test_loss_when_the_target_closes_the_parked_fd(c_target) -> None:
    t, _ = start_writer(c_target, churn=0)
    state = open_tracker(t.pid, "uffd-wp").detach()
    from ckpt.control.seize import freeze
    with freeze(t.pid) as fp:  # the target itself closing the fd, as a daemonizing process would
        fp.injector().close(state.parked_fd)
    with pytest.raises(TrackingLost, match="closed"):
        open_tracker(t.pid, state=state)
    # something else at that number is not taken for ours either
    with freeze(t.pid) as fp:
        inj = fp.injector()
        other = inj.userfaultfd()
        inj.fcntl(other, 1030, state.parked_fd)  # F_DUPFD_CLOEXEC: lowest free ≥ parked_fd
        inj.close(other)
    with pytest.raises(TrackingLost, match="not the userfaultfd"):
        open_tracker(t.pid, state=state)


def test_loss_on_exec(c_target) -> None:
    t, _ = start_writer(c_target, churn=0)
    tracker = open_tracker(t.pid, "uffd-wp")
    try:
        tracker.collect()
        t.write(b"x\n")
        from targets import wait_until
        wait_until(lambda: os.readlink(f"/proc/{t.pid}/exe") == "/usr/bin/sleep", "the target exec'd")
        with pytest.raises(TrackingLost, match="exec"):
            tracker.collect()
    finally:
        tracker.stop()
    assert find_userfaultfds(t.pid) == {}


def test_exit_mid_tracking_is_reported(c_target) -> None:
    t, _ = start_writer(c_target, churn=0)
    tracker = open_tracker(t.pid, "uffd-wp")
    t.close()
    with pytest.raises(TargetGone):
        tracker.collect()
    tracker.stop()  # no error for a gone target


def test_write_watch_on_the_calling_process() -> None:
    npages = 256
    buf = mmap.mmap(-1, npages * PAGE_SIZE)
    addr = buffer_address(buf)
    with WriteWatch(ranges=[(addr, addr + npages * PAGE_SIZE)]) as ww:
        assert ww.method == "uffd-wp"
        assert ww.get_and_reset().written_pages == 0  # start() already write-protected
        pages = [3, 4, 5, 100, 255]
        for p in pages:
            buf[p * PAGE_SIZE + 7] = 1
        peek = ww.get()
        assert sorted(peek.pages()) == [addr + p * PAGE_SIZE for p in pages]
        got = ww.get_and_reset()
        assert [r for v in got.vmas for r in v.written] == [(addr + 3 * PAGE_SIZE, 3), (addr + 100 * PAGE_SIZE, 1),
                                                            (addr + 255 * PAGE_SIZE, 1)]
        assert ww.get_and_reset().written_pages == 0
        buf[10 * PAGE_SIZE] = 1
        ww.reset()
        assert ww.get().written_pages == 0
        # MADV_DONTNEED'd pages report as holes, not as written pages
        buf[20 * PAGE_SIZE] = 1
        buf.madvise(mmap.MADV_DONTNEED, 20 * PAGE_SIZE, PAGE_SIZE)
        holes = ww.get_and_reset()
        assert [r for v in holes.vmas for r in v.holes] == [(addr + 20 * PAGE_SIZE, 1)]
        assert holes.written_pages == 0
    buf.close()


def test_ranges_narrow_and_parked_fd_respects_rlimit(c_target) -> None:
    t, area = start_writer(c_target, churn=0, threads=1, rate=1000)
    import resource
    resource.prlimit(t.pid, resource.RLIMIT_NOFILE, (64, 64))
    half = (area[0], area[0] + (area[1] - area[0]) // 2)
    tracker = open_tracker(t.pid, "uffd-wp", ranges=RangeSpec(include=(half,)))
    try:
        assert 3 <= tracker.parked_fd <= 63
        time.sleep(0.05)
        ds = tracker.collect()
        assert [(v.start, v.end) for v in ds.vmas] == [half]
        assert 0 < ds.written_pages
    finally:
        tracker.stop()
    assert find_userfaultfds(t.pid) == {}
