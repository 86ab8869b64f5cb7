"""timerfd(2): the settime flags, the checkpoint/restore ioctl, and timerfd_gettime on our own descriptor.

The dumper calls :func:`timerfd_gettime` on a duplicate of the target's
timerfd (``pidfd_getfd``: one open file, one timer).  Besides answering, it
*forwards* a periodic timer that expired and was not read yet: the kernel then
adds the missed periods to the tick count and re-arms the timer, which
``/proc/PID/fdinfo`` alone never does (there such a timer shows ``it_value:
(0, 0)`` and one tick).  Nothing is consumed: a later read() returns the same
total.  ``TFD_IOC_SET_TICKS`` (CONFIG_CHECKPOINT_RESTORE) sets the count of
expirations not yet read; timerfd_settime resets it to 0, so it comes after.
"""

from __future__ import annotations

import ctypes

from .arch_x86_64 import NR
from .ioctl import _IOW
from .libc import syscall

__all__ = ["TFD_TIMER_ABSTIME", "TFD_TIMER_CANCEL_ON_SET", "TFD_IOC_SET_TICKS", "timespec", "itimerspec",
           "timerfd_gettime"]

TFD_TIMER_ABSTIME = 1
#: With TFD_TIMER_ABSTIME on CLOCK_REALTIME: read() fails with ECANCELED when the clock is set.
TFD_TIMER_CANCEL_ON_SET = 2
TFD_IOC_SET_TICKS = _IOW("T", 0, ctypes.c_uint64)


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    @property
    def ns(self) -> int:
        return self.tv_sec * 1_000_000_000 + self.tv_nsec


class itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", timespec), ("it_value", timespec)]


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """(ns until the next expiry, interval in ns) of the timer ``fd``; (0, interval) when disarmed or expired."""
    cur = itimerspec()
    syscall(NR.timerfd_gettime, fd, ctypes.addressof(cur), name=f"timerfd_gettime({fd})")
    return cur.it_value.ns, cur.it_interval.ns
