"""timerfd: clock, settime flags, the time left, the period and the expirations not yet read.

Dump reads the timer through a duplicate of the target's descriptor
(``pidfd_getfd``: the same open file, so the same timer): first
:func:`~ckpt.kernel.timerfd.timerfd_gettime`, which brings a periodic timer
that expired unread up to date — fdinfo alone shows such a timer as
``it_value: (0, 0)`` with one tick, however many periods passed — then fdinfo,
which prints clock, ticks, flags, time left and period under one lock.  If the
timer expires again in between (a periodic one shows (0, 0) again), both are
read again.  Nothing is consumed: the target reads the same total afterwards.

Restore injects ``timerfd_create(clockid, TFD_CLOEXEC | O_NONBLOCK as saved)``
and ``timerfd_settime`` with the saved flags:

* a relative timer, or an absolute one on CLOCK_MONOTONIC / CLOCK_BOOTTIME
  (and _ALARM): the time that was left at the dump, counted from the restore —
  the clock stands still while the process is checkpointed, as for its other
  waits (those clocks are per boot: an absolute value means nothing after a
  reboot or on another machine).  An absolute one is re-armed absolute (now +
  time left) so its settime flags stay what the program set; "now" is read by
  the helper itself, on the clocks of the time namespace it was restored into;
* TFD_TIMER_ABSTIME on CLOCK_REALTIME (and _ALARM): the same wall-clock
  deadline, which is what the program asked for.  One that passed while the
  process was checkpointed expires at once (a periodic one then counts every
  period missed meanwhile, as after a suspend).  TFD_TIMER_CANCEL_ON_SET is
  kept; a timer already cancelled by a clock change (read() gives ECANCELED)
  cannot be seen in fdinfo and comes back uncancelled.

Expirations not yet read are set with ``TFD_IOC_SET_TICKS`` after the
settime (which resets them); a kernel without CONFIG_CHECKPOINT_RESTORE
answers ENOTTY and they are lost, with a note.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from ..control.inject import Injector, Scratch
from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import dup_from
from ..kernel.timerfd import TFD_IOC_SET_TICKS, TFD_TIMER_ABSTIME, timerfd_gettime
from ..procfs.fdinfo import read_fdinfo
from .fdkind import FdDump, FdKind, Opener, anon

__all__ = ["CLOCK_REALTIME", "CLOCK_REALTIME_ALARM", "KIND", "dump", "restore"]

CLOCK_REALTIME = 0
CLOCK_BOOTTIME = 7
CLOCK_REALTIME_ALARM = 8
CLOCK_BOOTTIME_ALARM = 9
#: The clock an alarm clock reads (clock_gettime on the _ALARM ids needs an RTC).
_READ_CLOCK = {CLOCK_REALTIME_ALARM: CLOCK_REALTIME, CLOCK_BOOTTIME_ALARM: CLOCK_BOOTTIME}
_NS = 1_000_000_000
_ITIMERSPEC = struct.Struct("<4q")  # it_interval {sec, nsec}, it_value {sec, nsec}
_READS = 5


def _ns(pair: tuple[int, int]) -> int:
    return pair[0] * _NS + pair[1]


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """The timer of the (frozen) descriptor into ``entry``, through a duplicate; nothing is consumed."""
    pid, fd = d.pid, d.fd
    ours = dup_from(pid, fd)
    try:
        for _ in range(_READS):
            timerfd_gettime(ours)  # forwards a periodic timer that expired unread: ticks become exact
            st = read_fdinfo(pid, fd).timerfd
            now_real = time.clock_gettime_ns(CLOCK_REALTIME)
            if st is None:
                raise d.refuse("a timerfd whose fdinfo shows no settings")
            value, interval = _ns(st.it_value), _ns(st.it_interval)
            if value or not interval:
                break
        else:  # a period so short that it always expired again: the next expiry is within one period
            value = interval
    finally:
        os.close(ours)
    t = files_pb2.TimerFd(clockid=st.clockid, settime_flags=st.settime_flags, ticks=st.ticks, value_ns=value,
                          interval_ns=interval)
    if value and st.settime_flags & TFD_TIMER_ABSTIME and st.clockid in (CLOCK_REALTIME, CLOCK_REALTIME_ALARM):
        t.expires_ns = now_real + value
    entry.timerfd.CopyFrom(t)


def _now_there(inj: Injector, s: Scratch, clockid: int) -> int:
    """The clock as the helper reads it: in its time namespace (:mod:`ckpt.resources.timens`), not ours."""
    inj.call(NR.clock_gettime, clockid, s.addr, name=f"clock_gettime({clockid})")
    sec, nsec = struct.unpack("<qq", s.read(0, 16))
    return sec * _NS + nsec


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """A new timerfd armed as saved (see the module docstring), with its unread expirations."""
    inj, s, t = r.inj, r.s, entry.timerfd
    try:
        fd = inj.call(NR.timerfd_create, t.clockid, os.O_CLOEXEC | (entry.flags & os.O_NONBLOCK),
                      name=f"timerfd_create({t.clockid})")
    except OSError as exc:
        raise RestoreError(f"cannot create a timerfd on clock {t.clockid}: {os.strerror(exc.errno)}") from exc
    try:
        if t.expires_ns:
            value = t.expires_ns
        elif t.value_ns and t.settime_flags & TFD_TIMER_ABSTIME:
            value = _now_there(inj, s, _READ_CLOCK.get(t.clockid, t.clockid)) + t.value_ns
        else:
            value = t.value_ns
        s.write(0, _ITIMERSPEC.pack(t.interval_ns // _NS, t.interval_ns % _NS, value // _NS, value % _NS))
        inj.call(NR.timerfd_settime, fd, t.settime_flags, s.addr, 0, name="timerfd_settime")
        if t.ticks:
            s.write(0, struct.pack("<Q", t.ticks))
            try:
                inj.call(NR.ioctl, fd, TFD_IOC_SET_TICKS, s.addr, name="ioctl(TFD_IOC_SET_TICKS)")
            except OSError as exc:
                if exc.errno != errno.ENOTTY:
                    raise
                # The self-check cannot see this loss (a timerfd's ticks run on while it is frozen).
                raise RestoreError(f"a timerfd on clock {t.clockid} had {t.ticks} expiration(s) not yet read, "
                                   "and this kernel cannot set them (no TFD_IOC_SET_TICKS: "
                                   "CONFIG_CHECKPOINT_RESTORE is off)") from None
    except BaseException:
        inj.close(fd)
        raise
    return fd


KIND = FdKind(files_pb2.FileEntry.TIMERFD, anon("anon_inode:[timerfd]"), dump, restore)
