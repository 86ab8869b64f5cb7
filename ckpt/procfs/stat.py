"""``/proc/PID/stat`` and ``/proc/PID/task/TID/stat`` (``do_task_stat`` in fs/proc/array.c).

Quirks:

* Field 2, ``comm``, is printed raw between parentheses and may contain
  spaces, parentheses and even a newline (``prctl(PR_SET_NAME)`` accepts any
  byte but NUL).  The only safe split is at the *last* ``)`` of the file: the
  fields after it are plain numbers.  (psutil learned this the hard way; we
  do the same.)
* ``start_code`` … ``env_end`` and ``kstkesp``/``kstkeip`` read as 0 unless
  the reader may ptrace the target (PTRACE_MODE_READ_FSCREDS) — and
  ``kstkesp``/``kstkeip`` are 0 except for a task that is dumping core.
  Kernel threads and zombies have no ``mm``: every address field is 0.
* ``exit_code`` is the raw wait status (``exit(3)`` shows 768).
* ``wchan`` is only 0/1 since 5.16, ``itrealvalue``, ``nswap`` and ``cnswap``
  are always 0, and the signal fields (31–34) are obsolete — use
  ``/proc/PID/status`` for signals.  None of these are kept.
* The brk *current* value is not in stat (only ``start_brk``): inject
  ``brk(0)`` to learn it (DESIGN §3).
* Times (``utime``, ``starttime`` …) are in clock ticks (``sysconf(_SC_CLK_TCK)``,
  100 here).  ``starttime`` counts from boot; with the pid it identifies a
  process (see :mod:`ckpt.procfs.task`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._proc import ProcDir

__all__ = ["PF_EXITING", "PF_KTHREAD", "Stat", "parse_stat", "read_stat", "read_task_stat"]

#: ``task_struct.flags`` bit of kernel threads (include/linux/sched.h).
PF_KTHREAD = 0x00200000
#: ``task_struct.flags`` bit of a thread in do_exit: killed, it is still listed (state R or D, its
#: other threads already gone) for as long as freeing its memory takes — milliseconds for a large one.
PF_EXITING = 0x00000004


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of ``/proc/PID/stat`` that ckpt uses, named as in proc(5)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    flags: int
    minflt: int
    cminflt: int
    majflt: int
    cmajflt: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    priority: int
    nice: int
    num_threads: int
    starttime: int
    vsize: int
    #: Resident pages (not bytes).
    rss: int
    rsslim: int
    start_code: int
    end_code: int
    start_stack: int
    exit_signal: int
    processor: int
    rt_priority: int
    policy: int
    delayacct_blkio_ticks: int
    guest_time: int
    cguest_time: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_code: int

    @property
    def is_kthread(self) -> bool:
        """A kernel thread (no user memory, nothing to checkpoint)."""
        return bool(self.flags & PF_KTHREAD)

    @property
    def exiting(self) -> bool:
        """In do_exit: dying, though not a zombie yet."""
        return bool(self.flags & PF_EXITING)


# Positions (1-based, as in proc(5)) of the numeric fields after the comm.
_FIELDS = {
    "ppid": 4, "pgrp": 5, "session": 6, "tty_nr": 7, "tpgid": 8, "flags": 9,
    "minflt": 10, "cminflt": 11, "majflt": 12, "cmajflt": 13, "utime": 14, "stime": 15,
    "cutime": 16, "cstime": 17, "priority": 18, "nice": 19, "num_threads": 20,
    "starttime": 22, "vsize": 23, "rss": 24, "rsslim": 25, "start_code": 26, "end_code": 27,
    "start_stack": 28, "exit_signal": 38, "processor": 39, "rt_priority": 40, "policy": 41,
    "delayacct_blkio_ticks": 42, "guest_time": 43, "cguest_time": 44, "start_data": 45,
    "end_data": 46, "start_brk": 47, "arg_start": 48, "arg_end": 49, "env_start": 50,
    "env_end": 51, "exit_code": 52,
}
_MIN_FIELDS = max(_FIELDS.values())  # 52 since Linux 3.5


def parse_stat(data: bytes) -> Stat:
    """Parse the bytes of a ``stat`` file (process or thread)."""
    open_ = data.find(b"(")
    close = data.rfind(b")")
    if open_ < 0 or close < open_:
        raise ValueError(f"stat: no '(comm)' in {data[:200]!r}")
    rest = data[close + 1:].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    if len(rest) < _MIN_FIELDS - 2:
        raise ValueError(f"stat: {len(rest) + 2} fields, need {_MIN_FIELDS}: {data[:200]!r}")
    try:
        nums = {name: int(rest[pos - 3]) for name, pos in _FIELDS.items()}
        pid = int(data[:open_])
    except ValueError:
        raise ValueError(f"stat: non-numeric field in {data[:200]!r}") from None
    return Stat(pid=pid, comm=os.fsdecode(data[open_ + 1:close]), state=rest[0].decode("ascii", "replace"),
                **nums)


def read_stat(pid: int, *, proc: ProcDir | None = None) -> Stat:
    """``/proc/PID/stat`` of a process."""
    return parse_stat((proc or ProcDir(pid)).read("stat"))


def read_task_stat(pid: int, tid: int, *, proc: ProcDir | None = None) -> Stat:
    """``/proc/PID/task/TID/stat`` of one thread; ``Stat.pid`` is the tid."""
    return parse_stat((proc or ProcDir(pid)).read(f"task/{tid}/stat", tid=tid))
