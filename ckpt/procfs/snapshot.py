"""One consistent view of a process's /proc files: each file read at most once.

psutil's ``oneshot()`` taught the idea (STYLE principle 3): when the target is
frozen, reading ``stat`` three times gives the same bytes three times, so
read it once and hand out the parsed record.  A :class:`Snapshot` is a cache
with lazy properties; nothing is read until asked for.

It also pins the process: the ``/proc/PID`` directory is opened once and every
file is read through that directory fd, so a snapshot can never read a
different process that got the same pid after the target died — the reads
fail with TargetGone instead.  Creating a snapshot from a
:class:`~ckpt.procfs.task.ProcessRef` additionally checks the start time.

The cache is only as fresh as the target is still: take a new snapshot after
thawing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from ..errors import TargetGone
from ._proc import ProcDir
from .auxv import Auxv, read_auxv
from .fdinfo import FdInfo, list_fds, read_fdinfo
from .maps import SmapsVma, Vma, read_maps, read_smaps, read_smaps_vmflags
from .stat import Stat, read_stat, read_task_stat
from .status import Status, read_status, read_status_values, read_task_status
from .task import ProcessRef, list_tids
from .timers import PosixTimerInfo, read_timers

__all__ = ["Snapshot", "snapshot"]


class Snapshot:
    """Lazily read, cached /proc records of one process; use as a context manager."""

    def __init__(self, target: int | ProcessRef, *, hidden: Sequence[tuple[int, int]] = ()) -> None:
        pid = target.pid if isinstance(target, ProcessRef) else target
        self.pid = pid
        #: Address ranges left out of maps/smaps/vmas: areas the controller itself mapped in the process.
        self.hidden = tuple(hidden)
        self._proc = ProcDir(pid, pinned=True)
        self._fdinfo: dict[int, FdInfo] = {}
        self._task_stat: dict[int, Stat] = {}
        self._task_status: dict[int, Status] = {}
        try:
            if isinstance(target, ProcessRef) and self.stat.starttime != target.starttime:
                raise TargetGone(pid, f"process {pid} has exited and its pid was reused")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._proc.close()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- whole-process files --------------------------------------------

    @cached_property
    def stat(self) -> Stat:
        return read_stat(self.pid, proc=self._proc)

    @cached_property
    def ref(self) -> ProcessRef:
        """(pid, starttime) of the snapshotted process."""
        return ProcessRef(self.pid, self.stat.starttime)

    @cached_property
    def status(self) -> Status:
        return read_status(self.pid, proc=self._proc)

    @cached_property
    def maps(self) -> list[Vma]:
        return [v for v in read_maps(self.pid, proc=self._proc) if not self._is_hidden(v)]

    @cached_property
    def smaps(self) -> list[SmapsVma]:
        return [e for e in read_smaps(self.pid, proc=self._proc) if not self._is_hidden(e.vma)]

    @cached_property
    def vmas(self) -> list[Vma]:
        """The maps with VmFlags (read from smaps, its counters skipped: a dump needs only the flags)."""
        if "smaps" in self.__dict__:  # read already: no second walk of the page tables
            return [e.vma for e in self.smaps]
        return [v for v in self._all_vmas if not self._is_hidden(v)]

    @cached_property
    def hidden_vmas(self) -> list[Vma]:
        """The controller's own areas, with their VmFlags: what the process's mm gives a new mapping
        (``mm->def_flags``, e.g. VM_LOCKED after ``mlockall(MCL_FUTURE)``)."""
        return [v for v in self._all_vmas if self._is_hidden(v)]

    @cached_property
    def _all_vmas(self) -> list[Vma]:
        return read_smaps_vmflags(self.pid, proc=self._proc)

    def _is_hidden(self, vma: Vma) -> bool:
        return any(start <= vma.start and vma.end <= end for start, end in self.hidden)

    @cached_property
    def auxv(self) -> Auxv:
        return read_auxv(self.pid, proc=self._proc)

    @cached_property
    def tids(self) -> list[int]:
        return list_tids(self.pid, proc=self._proc)

    @cached_property
    def fds(self) -> list[tuple[int, str]]:
        """(fd, readlink target) pairs."""
        return list_fds(self.pid, proc=self._proc)

    @cached_property
    def timers(self) -> list[PosixTimerInfo]:
        """POSIX timers (``/proc/PID/timers``), sorted by id."""
        return read_timers(self.pid, proc=self._proc)

    def readlink(self, rel: str) -> str:
        """A symlink below the pinned ``/proc/PID`` (``cwd``, ``root``, ``exe``, ``fd/N``); not cached."""
        return self._proc.readlink(rel)

    # -- per-object files -----------------------------------------------

    def fdinfo(self, fd: int) -> FdInfo:
        if fd not in self._fdinfo:
            self._fdinfo[fd] = read_fdinfo(self.pid, fd, proc=self._proc)
        return self._fdinfo[fd]

    def task_stat(self, tid: int) -> Stat:
        if tid not in self._task_stat:
            self._task_stat[tid] = read_task_stat(self.pid, tid, proc=self._proc)
        return self._task_stat[tid]

    def task_status(self, tid: int) -> Status:
        if tid not in self._task_status:
            self._task_status[tid] = read_task_status(self.pid, tid, proc=self._proc)
        return self._task_status[tid]

    def task_status_values(self, tid: int, *keys: str) -> list[str]:
        """A few lines of the thread's status, unparsed otherwise (:func:`read_status_values`; not cached)."""
        return read_status_values(self.pid, *keys, tid=tid, proc=self._proc)


def snapshot(target: int | ProcessRef, *, hidden: Sequence[tuple[int, int]] = ()) -> Snapshot:
    """Open a :class:`Snapshot` of ``target`` (``with snapshot(pid) as snap: ...``); ``hidden``: ranges left out of its maps."""
    return Snapshot(target, hidden=hidden)
