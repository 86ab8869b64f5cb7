"""``/proc/PID/timers``: the POSIX timers (timer_create) of a process, without their times.

One block of four lines per timer (fs/proc/base.c, show_timer), seen on 6.18::

    ID: 3
    signal: 12/deadbeef12345678
    notify: signal/tid.7279
    ClockID: 0

* ``signal: SIGNO/VALUE``: ``sigev_signo``, then ``sigev_value`` printed with
  ``%px`` — the raw pointer, 16 hex digits, not hashed (for a timer created
  without a sigevent the kernel fills in SIGALRM and the timer's own id);
* ``notify: HOW/WHO.N``: HOW is ``signal``, ``none`` or ``thread`` (the
  SIGEV_* value without SIGEV_THREAD_ID), WHO is ``tid`` for SIGEV_THREAD_ID
  timers and ``pid`` otherwise; N is that pid/tid in the *reader's* pid
  namespace (0 once the thread has exited);
* ``ClockID``: the clock id as passed to timer_create, negative for the CPU
  clocks of clock_getcpuclockid / pthread_getcpuclockid.

Blocks come in hash order (newest first here), not by id: :func:`parse_timers`
sorts them.  Remaining time and interval are not shown: they are read from
inside with timer_gettime.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kernel.timers import SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD, SIGEV_THREAD_ID
from ._proc import ProcDir

__all__ = ["PosixTimerInfo", "parse_timers", "read_timers"]

_NOTIFY = {b"signal": SIGEV_SIGNAL, b"none": SIGEV_NONE, b"thread": SIGEV_THREAD}


@dataclass(frozen=True, slots=True)
class PosixTimerInfo:
    """One timer as /proc shows it: what timer_create was given, and its id."""

    id: int
    signo: int
    sigev_value: int
    sigev_notify: int  # SIGEV_*, with SIGEV_THREAD_ID or-ed in for a thread-directed timer
    notify_pid: int    # the tid for SIGEV_THREAD_ID, else the process's pid (0: gone)
    clock_id: int


def parse_timers(data: bytes) -> list[PosixTimerInfo]:
    """Every block of ``/proc/PID/timers``, sorted by id; ValueError on a line it does not know."""
    out: list[PosixTimerInfo] = []
    cur: dict[bytes, bytes] = {}

    def flush() -> None:
        if not cur:
            return
        try:
            signo, value = cur[b"signal"].split(b"/", 1)
            how, who = cur[b"notify"].split(b"/", 1)
            kind, npid = who.split(b".", 1)
            notify = _NOTIFY[how] | (SIGEV_THREAD_ID if kind == b"tid" else 0)
            out.append(PosixTimerInfo(int(cur[b"ID"]), int(signo), int(value, 16), notify, int(npid),
                                      int(cur[b"ClockID"])))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"timers: cannot parse block {cur!r}: {exc}") from None
        cur.clear()

    for line in data.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"timers: unexpected line {line!r}")
        if key == b"ID":
            flush()
        cur[key] = value.strip()
    flush()
    out.sort(key=lambda t: t.id)
    return out


def read_timers(pid: int, *, proc: ProcDir | None = None) -> list[PosixTimerInfo]:
    """The POSIX timers of ``pid``, sorted by id."""
    return parse_timers((proc or ProcDir(pid)).read("timers"))
