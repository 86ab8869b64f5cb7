"""Interval timers and POSIX timers: dump and restore a process that checks its own timers (scenarios/timers.c).

The target has ITIMER_REAL/VIRTUAL/PROF armed and POSIX timers with ids 0, 2, 3, 4, 5 (1 was deleted):
a long one, a disarmed one, a periodic one aimed at its worker thread (SIGEV_THREAD_ID), a 200 ms
tick counter and a one-shot whose signal waits, blocked, in the queue.  Each SIGUSR1 makes it check
ids, /proc/self/timers, time left and intervals, that the ticks go on and that the queued signal is
taken exactly once, and report PASS with the time its timers "lag" behind CLOCK_MONOTONIC: the time
it spent in an image.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import ckpt.dump
from ckpt.control.seize import freeze
from ckpt.dump import dump, restore
from ckpt.errors import RestoreError
from ckpt.image.pb import process_pb2
from ckpt.image.reader import Image
from ckpt.image.show import show
from ckpt.kernel.timers import SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID
from ckpt.procfs.timers import read_timers
from ckpt.resources import timers
from resources_helpers import need_root, start_helper
from targets import Target, tracer_of
from test_dump_restore import _forget

pytestmark = need_root
SIGRTMIN = signal.SIGRTMIN  # glibc's (34), as the C target uses it
MS = 1_000_000


def _round(t: Target) -> dict[str, str]:
    """One check round of the target: its PASS line's fields (a FAIL line fails the test)."""
    os.kill(t.pid, signal.SIGUSR1)
    line = t.expect("PASS", timeout=5)
    return dict(part.split("=", 1) for part in line.split()[1:])


def _start(c_target) -> tuple[Target, dict[str, str]]:  # noqa: ANN001
    """The target, set up; no check round yet, so the one-shot's signal is still queued."""
    t = c_target("timers")
    ready = t.ready()
    assert ready["ids"] == "0,2,3,4,5"
    return t, ready


def test_timers_round_trip(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, ready = _start(c_target)
    worker = int(ready["worker"])
    proc_timers = read_timers(t.pid)

    dump(t.pid, tmp_path / "img")
    t_dumped = time.monotonic()
    _forget(t)

    tm = Image.open(tmp_path / "img").process(t.pid).timers
    assert tm.real.interval_us == 5_000_000 and 0 < tm.real.value_us <= 10_000_000
    assert tm.virtual.interval_us == 50_000_000 and tm.prof.interval_us == 0 and tm.prof.value_us > 0
    by_id = {p.id: p for p in tm.posix}
    assert sorted(by_id) == [0, 2, 3, 4, 5]
    assert [(p.id, p.signo, p.sigev_value, p.clock_id) for p in tm.posix] == \
        [(x.id, x.signo, x.sigev_value, x.clock_id) for x in proc_timers]
    assert by_id[3].sigev_notify == SIGEV_SIGNAL | SIGEV_THREAD_ID and by_id[3].notify_tid == worker
    assert by_id[3].interval_ns == 300 * MS and by_id[4].interval_ns == 200 * MS and 0 < by_id[4].value_ns <= 200 * MS
    assert by_id[2].value_ns == 0 and by_id[5].value_ns == 0  # disarmed, and the one-shot that fired
    assert by_id[5].queued_at_read == 1  # its signal waits in the queue: restored with the pending signals
    pending = Image.open(tmp_path / "img").process(t.pid).shared_pending
    assert timers.timer_signal_counts(p.siginfo for p in pending)[5] == 1
    assert "posix" in show(tmp_path / "img") and "sigev_value: 0xc0c0" in show(tmp_path / "img")

    t_restore = time.monotonic()
    r = restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == t.pid and tracer_of(t.pid) == 0
    assert read_timers(t.pid) == proc_timers  # same ids, signals, values, clocks, target thread
    first = _round(t)  # ids, intervals, time left, the queued one-shot signal taken once, ticks go on
    # The image's time did not count: the timers have (at least) the time between dump and restore more left.
    away_ms = (t_restore - t_dumped) * 1000
    assert int(first["lag_real"]) >= away_ms - 20 and int(first["lag_a"]) >= away_ms - 20, (first, away_ms)
    second = _round(t)  # and once more: nothing was queued twice
    assert int(second["ticks"]) > int(first["ticks"]) and int(second["cticks"]) > int(first["cticks"])


def test_timers_untouched_by_leave_running(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, _ready = _start(c_target)
    before = read_timers(t.pid)
    dump(t.pid, tmp_path / "img", leave_running=True)
    assert tracer_of(t.pid) == 0 and read_timers(t.pid) == before
    first = _round(t)  # the one-shot's signal still queued (taken once, in this round), the ticks go on
    # Never re-armed: the timers ran on with CLOCK_MONOTONIC through the freeze (the one-shot's signal,
    # which a timer_settime or timer_delete would have dropped, was taken in the round above).
    assert int(first["lag_real"]) <= 20 and int(first["lag_a"]) <= 20, first
    dump(t.pid, tmp_path / "img2", leave_running=True)  # the signal is gone now, the ticks go on
    second = _round(t)
    assert int(second["ticks"]) > int(first["ticks"]) and int(second["lag_real"]) <= 20
    assert t.alive()


def test_expiry_between_read_and_end_of_dump_is_not_armed_again(c_target, tmp_path: Path,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The pending queues are read last; a tick that expires after the timers were read is in them, and
    the image says so (queued_at_read): the restore arms that timer one interval later, not twice."""
    t, _ready = _start(c_target)

    def slow(ctx) -> None:  # noqa: ANN001 - a dumper after the timers, slow enough for the 200 ms tick to expire
        tick = next(p for p in ctx.entry.timers.posix if p.id == 4)
        deadline = time.monotonic() + 1
        while timers.timer_signal_counts(timers.queued_signals(ctx.proc))[4] <= tick.queued_at_read:
            if time.monotonic() > deadline:
                return  # its signal was queued before the read already: no new one comes, try again
            time.sleep(0.005)

    monkeypatch.setattr(ckpt.dump, "PROCESS_DUMPERS", ckpt.dump.PROCESS_DUMPERS + [("slow", slow)])
    for attempt in range(3):
        img = tmp_path / f"img{attempt}"
        dump(t.pid, img, leave_running=True)
        entry = Image.open(img).process(t.pid)
        tick = next(p for p in entry.timers.posix if p.id == 4)
        pending = timers.timer_signal_counts(
            [p.siginfo for p in entry.shared_pending] + [p.siginfo for c in Image.open(img).threads(t.pid)
                                                         for p in c.pending])
        if tick.queued_at_read == 0:
            break
    assert pending[4] == 1 and tick.queued_at_read == 0, (pending, tick)
    assert timers.arm_value_ns(tick, pending[4]) == tick.value_ns + 200 * MS
    assert _round(t)["round"] == "1"  # -R: the original got that tick once, and runs on


def _posix(id_: int, notify: int = SIGEV_SIGNAL, **kw) -> process_pb2.PosixTimer:  # noqa: ANN003
    return process_pb2.PosixTimer(id=id_, clock_id=1, sigev_notify=notify, signo=SIGRTMIN + 1, sigev_value=id_ + 0x100,
                                  **kw)


@pytest.mark.parametrize("explicit_ids", [None, False], ids=["prctl", "counting"])
def test_posix_timers_get_their_ids(c_target, explicit_ids: bool | None) -> None:  # noqa: ANN001
    """With PR_TIMER_CREATE_RESTORE_IDS (6.17+), and the old way: fill the gaps with temporary timers."""
    h = start_helper(c_target)
    want = [_posix(0), _posix(3, value_ns=60_000 * MS, interval_ns=5 * MS), _posix(7, SIGEV_NONE)]
    if explicit_ids is None:
        want.append(_posix(1_000_000))  # instant with the prctl; out of reach the old way
    with freeze(h.pid) as hp:
        timers.restore_posix_timers(hp.injector(), want, Counter(), explicit_ids=explicit_ids)
        got = timers.dump_posix_timers(hp, _Snap(h.pid))
    assert [(p.id, p.signo, p.sigev_value, p.sigev_notify) for p in got] == \
        [(p.id, p.signo, p.sigev_value, p.sigev_notify) for p in want]  # no temporary timer left
    armed = {p.id: (p.value_ns, p.interval_ns) for p in got}
    assert 59_000 * MS < armed[3][0] <= 60_000 * MS and armed[3][1] == 5 * MS and armed[0] == (0, 0)
    assert h.alive() and tracer_of(h.pid) == 0


def test_unreachable_timer_id_is_refused_without_the_prctl(c_target) -> None:  # noqa: ANN001
    h = start_helper(c_target)
    with freeze(h.pid) as hp:
        with pytest.raises(RestoreError, match="POSIX timer 5000: out of reach"):
            timers.restore_posix_timers(hp.injector(), [_posix(5000)], Counter(), explicit_ids=False)
    assert h.alive()


class _Snap:
    """The one Snapshot attribute dump_posix_timers reads."""

    def __init__(self, pid: int) -> None:
        self.timers = read_timers(pid)
