"""Timers without a live process: /proc/PID/timers parsing, the restore's arming rule, old images."""

from __future__ import annotations

import ctypes

import pytest

from ckpt.image.pb import process_pb2
from ckpt.kernel.signals import SI_QUEUE, SI_TIMER, make_siginfo
from ckpt.kernel.timers import SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID, itimerspec, itimerval, sigevent, timespec
from ckpt.procfs.timers import PosixTimerInfo, parse_timers
from ckpt.resources import timers

# As 6.18 prints it: hash order, newest first.
PROC_TIMERS = b"""ID: 5
signal: 12/deadbeef12345678
notify: none/pid.7279
ClockID: -6
ID: 4
signal: 14/0000000000000004
notify: signal/pid.7279
ClockID: 7
ID: 3
signal: 12/deadbeef12345678
notify: signal/tid.7280
ClockID: 0
ID: 0
signal: 35/0000000000000000
notify: signal/pid.7279
ClockID: 1
"""


def test_parse_proc_timers() -> None:
    got = parse_timers(PROC_TIMERS)
    assert [t.id for t in got] == [0, 3, 4, 5]
    assert got[1] == PosixTimerInfo(3, 12, 0xDEADBEEF12345678, SIGEV_SIGNAL | SIGEV_THREAD_ID, 7280, 0)
    assert got[3].sigev_notify == SIGEV_NONE and got[3].clock_id == -6
    assert got[2].sigev_value == 4 and got[2].signo == 14  # created without a sigevent: SIGALRM, its own id
    assert parse_timers(b"") == []


@pytest.mark.parametrize("text", [b"ID: 1\nsignal: x\n", b"ID: 1\nnotify: bogus/pid.1\nsignal: 1/0\nClockID: 1\n",
                                  b"garbage\n"])
def test_parse_proc_timers_refuses_what_it_does_not_know(text: bytes) -> None:
    with pytest.raises(ValueError, match="timers"):
        parse_timers(text)


def test_struct_layouts() -> None:
    assert ctypes.sizeof(sigevent) == 64 and sigevent.sigev_notify_thread_id.offset == 16
    its = itimerspec(timespec.of_nsec(5), timespec.of_nsec(3_000_000_001))
    assert bytes(its)[:16] == bytes(8) + (5).to_bytes(8, "little")  # interval first: 0 s, 5 ns
    assert its.it_value.nsec == 3_000_000_001 and ctypes.sizeof(itimerval) == 32


def _timer(value: int, interval: int, queued: int) -> process_pb2.PosixTimer:
    return process_pb2.PosixTimer(id=4, value_ns=value, interval_ns=interval, queued_at_read=queued)


def test_arm_value_skips_an_expiry_already_in_the_queue() -> None:
    # Nothing happened after the read: armed with what was left.
    assert timers.arm_value_ns(_timer(150, 200, 0), pending=0) == 150
    assert timers.arm_value_ns(_timer(150, 200, 1), pending=1) == 150  # queued before the read already
    # Expired between the read and the end of the dump: that expiry is the queued signal.
    assert timers.arm_value_ns(_timer(1, 200, 0), pending=1) == 201
    assert timers.arm_value_ns(_timer(1, 0, 0), pending=1) == 0  # a one-shot stays disarmed
    assert timers.arm_value_ns(_timer(0, 0, 0), pending=1) == 0


def test_timer_signal_counts() -> None:
    def timer_info(tid: int) -> bytes:
        raw = bytearray(make_siginfo(35, SI_TIMER))
        raw[16:20] = tid.to_bytes(4, "little")
        return bytes(raw)

    counts = timers.timer_signal_counts([timer_info(4), timer_info(4), timer_info(0), make_siginfo(35, SI_QUEUE)])
    assert counts == {4: 2, 0: 1}


def test_image_without_timers_restores_nothing() -> None:
    """Older images (and processes without timers) have no ``timers``: nothing is injected."""
    entry = process_pb2.ProcessEntry(pid=1)
    assert not entry.HasField("timers")
    timers.restore(None, entry, [])  # type: ignore[arg-type]  # would fail on any injection
