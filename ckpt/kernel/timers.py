"""Interval timers and POSIX timers: the structs and constants of getitimer(2), timer_create(2) and friends.

Only layouts and values (include/uapi/linux/time.h, asm-generic/siginfo.h,
uapi/linux/prctl.h); the calls are injected into the target, because every
timer belongs to the process that created it.  x86_64 layouts: a ``timeval``
and a ``timespec`` are two 64-bit longs, ``struct itimerval`` /
``struct itimerspec`` put the *interval first* and the value second, and
``struct sigevent`` is 64 bytes with the notify thread id at offset 16.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF", "ITIMER_NAMES",
    "SIGEV_SIGNAL", "SIGEV_NONE", "SIGEV_THREAD", "SIGEV_THREAD_ID",
    "CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID", "CLOCK_THREAD_CPUTIME_ID",
    "CLOCK_BOOTTIME", "CLOCK_REALTIME_ALARM", "CLOCK_BOOTTIME_ALARM", "CLOCK_TAI",
    "PR_TIMER_CREATE_RESTORE_IDS", "PR_TIMER_CREATE_RESTORE_IDS_OFF", "PR_TIMER_CREATE_RESTORE_IDS_ON",
    "PR_TIMER_CREATE_RESTORE_IDS_GET",
    "timeval", "itimerval", "timespec", "itimerspec", "sigevent", "siginfo_timerid",
    "USEC_PER_SEC", "NSEC_PER_SEC",
]

ITIMER_REAL = 0      # wall clock; SIGALRM
ITIMER_VIRTUAL = 1   # user CPU time of the process; SIGVTALRM
ITIMER_PROF = 2      # user + system CPU time of the process; SIGPROF
ITIMER_NAMES = {ITIMER_REAL: "ITIMER_REAL", ITIMER_VIRTUAL: "ITIMER_VIRTUAL", ITIMER_PROF: "ITIMER_PROF"}

SIGEV_SIGNAL = 0
SIGEV_NONE = 1
SIGEV_THREAD = 2     # glibc turns it into SIGEV_THREAD_ID to a helper thread; the kernel treats it as SIGEV_SIGNAL
SIGEV_THREAD_ID = 4  # or-ed with SIGEV_SIGNAL (0): signal one thread, sigev_notify_thread_id

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME_ID = 2
CLOCK_THREAD_CPUTIME_ID = 3
CLOCK_BOOTTIME = 7
CLOCK_REALTIME_ALARM = 8
CLOCK_BOOTTIME_ALARM = 9
CLOCK_TAI = 11

#: Linux 6.17+: while ON, timer_create() takes the id to create from the timer_t it is handed.
PR_TIMER_CREATE_RESTORE_IDS = 77
PR_TIMER_CREATE_RESTORE_IDS_OFF = 0
PR_TIMER_CREATE_RESTORE_IDS_ON = 1
PR_TIMER_CREATE_RESTORE_IDS_GET = 2

USEC_PER_SEC = 1_000_000
NSEC_PER_SEC = 1_000_000_000


class timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_usec", ctypes.c_int64)]

    @property
    def usec(self) -> int:
        return self.tv_sec * USEC_PER_SEC + self.tv_usec

    @classmethod
    def of_usec(cls, usec: int) -> "timeval":
        return cls(*divmod(usec, USEC_PER_SEC))


class itimerval(ctypes.Structure):
    """What getitimer/setitimer read and write (``__kernel_old_itimerval``): interval, then value."""

    _fields_ = [("it_interval", timeval), ("it_value", timeval)]


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]

    @property
    def nsec(self) -> int:
        return self.tv_sec * NSEC_PER_SEC + self.tv_nsec

    @classmethod
    def of_nsec(cls, nsec: int) -> "timespec":
        return cls(*divmod(nsec, NSEC_PER_SEC))


class itimerspec(ctypes.Structure):
    """What timer_gettime/timer_settime read and write: interval, then value."""

    _fields_ = [("it_interval", timespec), ("it_value", timespec)]


class sigevent(ctypes.Structure):
    """``struct sigevent`` as timer_create(2) reads it (64 bytes)."""

    _fields_ = [
        ("sigev_value", ctypes.c_uint64),
        ("sigev_signo", ctypes.c_int32),
        ("sigev_notify", ctypes.c_int32),
        ("sigev_notify_thread_id", ctypes.c_int32),
        ("_pad", ctypes.c_int32 * 11),
    ]


assert ctypes.sizeof(itimerval) == 32 and ctypes.sizeof(itimerspec) == 32 and ctypes.sizeof(sigevent) == 64


def siginfo_timerid(info: bytes) -> int:
    """``si_timerid`` of a SI_TIMER siginfo (first int of the union, at offset 16)."""
    return int.from_bytes(info[16:20], "little", signed=True)
