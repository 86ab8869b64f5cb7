"""A process's time namespace: ``/proc/PID/ns/time``, ``ns/time_for_children`` and ``timens_offsets``.

A time namespace (Linux 5.6, CONFIG_TIME_NS) shifts CLOCK_MONOTONIC and
CLOCK_BOOTTIME (and their _RAW, _COARSE and _ALARM variants) of its members
by fixed offsets against the host's clocks; CLOCK_REALTIME is never shifted.
``unshare(CLONE_NEWTIME)`` gives only the caller's *future children* the new
namespace (``ns/time_for_children``); the caller stays where it was.

Quirks (Linux 6.18):

* ``timens_offsets`` shows the offsets of ``time_for_children``, not of
  ``time``: the two differ only in a process that unshared and has not forked
  since, whose own offsets this file then does not show.
* Offsets are ``seconds nanoseconds`` with 0 <= nanoseconds < 10**9, against
  the host's clocks (namespaces do not nest): the initial namespace shows 0 0.
* The initial time namespace always has inode 0xEFFFFFFA (PROC_TIME_INIT_INO,
  include/linux/proc_ns.h), whatever the pid namespace: comparing with
  ``/proc/1/ns/time`` instead fails for root without CAP_SYS_PTRACE over init.
* Without CONFIG_TIME_NS, ``ns/time`` does not exist: every process is on the host's clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AccessDenied, TargetError
from ._proc import ProcDir

__all__ = ["INIT_TIME_NS_INO", "TimensOffsets", "TimeNs", "parse_timens_offsets", "read_time_ns", "read_boot_id"]

#: The inode of the initial time namespace (PROC_TIME_INIT_INO).
INIT_TIME_NS_INO = 0xEFFFFFFA
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TimensOffsets:
    """Offsets of a time namespace against the host's clocks, in nanoseconds (0, 0 in the initial one)."""

    monotonic_ns: int = 0
    boottime_ns: int = 0


@dataclass(frozen=True, slots=True)
class TimeNs:
    """The time namespaces of one process: its own, its future children's, and the children's offsets."""

    inode: int
    children_inode: int
    offsets: TimensOffsets

    @property
    def initial(self) -> bool:
        """On the host's clocks (the initial namespace)."""
        return self.inode == INIT_TIME_NS_INO


def parse_timens_offsets(data: bytes) -> TimensOffsets:
    """``monotonic SEC NSEC`` / ``boottime SEC NSEC`` lines (a clock id instead of the name is taken too)."""
    got: dict[str, int] = {}
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        name = {"1": "monotonic", "7": "boottime"}.get(parts[0], parts[0])
        got[name] = int(parts[1]) * _NS + int(parts[2])
    return TimensOffsets(got.get("monotonic", 0), got.get("boottime", 0))


def _inode(link: str) -> int:
    """``time:[4026531834]`` → 4026531834."""
    return int(link[link.index("[") + 1:link.rindex("]")])


def read_time_ns(pid: int, *, proc: ProcDir | None = None) -> TimeNs | None:
    """The time namespaces of ``pid``; None on a kernel without time namespaces (or for a zombie)."""
    p = proc or ProcDir(pid)
    try:
        own = _inode(p.readlink("ns/time"))
        children = _inode(p.readlink("ns/time_for_children"))
    except AccessDenied:
        raise
    except TargetError:
        if not p.alive():
            raise
        return None  # no ns/time link: no CONFIG_TIME_NS, or a zombie (no nsproxy)
    offsets = parse_timens_offsets(p.read("timens_offsets")) if children != INIT_TIME_NS_INO else TimensOffsets()
    return TimeNs(own, children, offsets)


def read_boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``): what CLOCK_MONOTONIC/BOOTTIME count from; "" if unreadable."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
