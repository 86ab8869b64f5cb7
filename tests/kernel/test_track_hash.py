"""hash tracker against the writer: no missed write, digests persisted in a digests-<owner>.img file."""

from __future__ import annotations

import time

import pytest

from ckpt.errors import CorruptImage
from ckpt.image import framing, kinds
from ckpt.track import TrackingLost, open_tracker
from ckpt.track.hash import load_digests

from .test_track_uffd import run_iterations, start_writer
from .writer_check import Tally, check_iteration, snapshot


def test_never_misses_a_write(c_target) -> None:
    t, area = start_writer(c_target, npages=1024, threads=2, rate=10000)
    tracker = open_tracker(t.pid, "hash")
    try:
        tally = run_iterations(tracker, t, area, 6)
    finally:
        tracker.stop()
    print(f"hash: {tally}")
    assert tally.misses == [] and tally.shadow_misses == 0
    assert tally.changed > 200 and tally.reported >= tally.changed
    assert tally.new_vmas > 0


def test_digests_survive_in_an_image_file(c_target, tmp_path) -> None:
    t, area = start_writer(c_target, npages=512, threads=1, rate=2000, churn=0)
    path = tmp_path / "digests-1.img"
    state = open_tracker(t.pid, "hash", digests_path=path).detach()
    data = path.read_bytes()
    assert framing.parse_header(path, data, kinds.DIGESTS.magic)[0] == b"HASH"
    owner, ranges = load_digests(path)
    assert owner == str(t.pid) and any(r.start <= area[0] and area[1] <= r.end for r in ranges)
    before = snapshot(t.pid, area)
    time.sleep(0.05)
    tracker = open_tracker(t.pid, state=state)
    tally = Tally()
    check_iteration(tracker, t.pid, area, before, tally, dict(before))
    assert tally.misses == [] and tally.changed > 10
    tracker.stop()
    path.write_bytes(data[:-5])  # truncated: unusable, so the next pre-dump is full
    with pytest.raises(TrackingLost):
        open_tracker(t.pid, state=state)
    path.unlink()
    with pytest.raises(TrackingLost, match="gone"):
        open_tracker(t.pid, state=state)
    assert CorruptImage  # the error the loader raises inside, turned into TrackingLost
