"""Threads of a process (``/proc/PID/task``) and the identity of a process.

A pid alone does not name a process: once it exits and is reaped the number
is handed out again (pid_max is 32768 here, so that happens quickly on a busy
machine).  ckpt names a process by **(pid, starttime)** — starttime is field
22 of stat, in clock ticks since boot — and checks it before acting on a pid
it saw earlier (STYLE principle 4).  Two processes can only share both if the
pid wraps around within one tick (10 ms).

``/proc/PID/task`` lists the tids of every thread in the group, the leader
included; a thread may exit (or a new one appear) between listing and use,
which is why the dumper lists repeatedly while seizing (DESIGN §4).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import TargetGone
from ._proc import ProcDir
from .stat import read_stat

__all__ = ["ProcessRef", "list_tids", "read_starttime", "in_our_pid_namespace"]


def list_tids(pid: int, *, proc: ProcDir | None = None) -> list[int]:
    """Thread ids of ``pid``, ascending (the leader's tid is ``pid``)."""
    return sorted(int(n) for n in (proc or ProcDir(pid)).listdir("task"))


def read_starttime(pid: int, *, proc: ProcDir | None = None) -> int:
    """Start time of ``pid`` in clock ticks after boot."""
    return read_stat(pid, proc=proc).starttime


def in_our_pid_namespace(pid: int) -> bool:
    """Whether ``pid`` lives in the caller's PID namespace (not a nested one).

    A process of a nested namespace has other pids and tids inside than the
    ones we see: an image taken from out here would record the outer ones
    while its memory holds the inner ones.
    """
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except FileNotFoundError:
        return True  # gone: the caller's next step says so


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """A process as (pid, starttime): survives pid reuse where a bare pid does not."""

    pid: int
    starttime: int

    @classmethod
    def of(cls, pid: int) -> "ProcessRef":
        """The process that has ``pid`` now (TargetGone if none)."""
        return cls(pid, read_starttime(pid))

    def is_current(self) -> bool:
        """True while the same process (zombie or not) still holds the pid."""
        try:
            return read_starttime(self.pid) == self.starttime
        except TargetGone:
            return False

    def check(self) -> None:
        """Raise TargetGone unless the same process still holds the pid."""
        try:
            now = read_starttime(self.pid)
        except TargetGone:
            raise TargetGone(self.pid, f"process {self.pid} has exited") from None
        if now != self.starttime:
            raise TargetGone(
                self.pid,
                f"process {self.pid} has exited and its pid was reused (start time {self.starttime} → {now})",
            )
