"""Parsers of ``/proc`` into typed, immutable records.

Each module parses ``bytes`` (``parse_*``, pure, fed canned text by the unit
tests) and reads a live process (``read_*``).  Errors of the live readers are
translated once, in :mod:`ckpt.procfs._proc`: a vanished process is
:class:`~ckpt.errors.TargetGone`, a forbidden one
:class:`~ckpt.errors.AccessDenied`.  :func:`snapshot` reads each file at most
once and never mistakes a reused pid for the target.
"""

from .auxv import AT, Auxv, parse_auxv, read_auxv
from .fdinfo import EpollTarget, FdInfo, InotifyWatch, TimerfdState, list_fds, parse_fdinfo, read_fdinfo
from .maps import SmapsVma, Vma, parse_maps, parse_smaps, parse_smaps_vmflags, read_maps, read_smaps, read_smaps_vmflags
from .mountinfo import Mount, parse_mountinfo, read_mountinfo
from .snapshot import Snapshot, snapshot
from .stat import Stat, parse_stat, read_stat, read_task_stat
from .status import Status, parse_status, read_status, read_status_values, read_task_status
from .task import ProcessRef, list_tids, read_starttime

__all__ = [
    "AT", "Auxv", "parse_auxv", "read_auxv",
    "EpollTarget", "FdInfo", "InotifyWatch", "TimerfdState", "list_fds", "parse_fdinfo", "read_fdinfo",
    "SmapsVma", "Vma", "parse_maps", "parse_smaps", "parse_smaps_vmflags", "read_maps", "read_smaps",
    "read_smaps_vmflags",
    "Mount", "parse_mountinfo", "read_mountinfo",
    "Snapshot", "snapshot",
    "Stat", "parse_stat", "read_stat", "read_task_stat",
    "Status", "parse_status", "read_status", "read_status_values", "read_task_status",
    "ProcessRef", "list_tids", "read_starttime",
]
