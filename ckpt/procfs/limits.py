"""``/proc/PID/limits``: every resource limit of a process, read from outside (fs/proc/base.c, proc_pid_limits).

One row per resource in RLIMIT_* order after a header line; the soft and hard
values are the raw ``rlim_cur``/``rlim_max`` (``unlimited`` for RLIM_INFINITY)
in the resource's own unit, as prlimit64 returns them.  Reading it needs no
CAP_SYS_RESOURCE (prlimit64 on another process does, unless the uids match):
a dump reads the limits with one file read instead of 16 injected syscalls.
"""

from __future__ import annotations

from ..kernel.resource import RLIM_INFINITY
from ._proc import ProcDir

__all__ = ["parse_limits", "read_limits"]


_COLUMNS = (26, 47)  # where the "Soft Limit" and "Hard Limit" columns start


def parse_limits(data: bytes) -> list[tuple[int, int]]:
    """[(soft, hard)] in RLIMIT_* order."""
    out = []
    for line in data.decode().splitlines()[1:]:
        soft, hard = line[_COLUMNS[0]:_COLUMNS[1]].strip(), line[_COLUMNS[1]:_COLUMNS[1] + 21].strip()
        out.append(tuple(RLIM_INFINITY if v == "unlimited" else int(v) for v in (soft, hard)))
    return out  # type: ignore[return-value]


def read_limits(pid: int, *, proc: ProcDir | None = None) -> list[tuple[int, int]]:
    """The limits of a live process, [(soft, hard)] in RLIMIT_* order."""
    return parse_limits((proc or ProcDir(pid)).read("limits"))
