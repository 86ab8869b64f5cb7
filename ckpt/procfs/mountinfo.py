"""``/proc/PID/mountinfo`` (``show_mountinfo`` in fs/proc_namespace.c): the mounts a process sees.

One line per mount: ``ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS
[OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS``.  ROOT (the part of the filesystem
mounted there; ``/`` unless a bind mount of a subtree) and MOUNTPOINT escape
space, tab, newline and backslash as ``\\ooo`` octal.  MAJOR:MINOR is the
filesystem's ``s_dev``, the ``sdev`` that inotify and epoll fdinfo lines print
as one kernel dev_t.  The same filesystem may be listed several times (bind
mounts, mounts over mounts).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ._proc import ProcDir

__all__ = ["Mount", "parse_mountinfo", "read_mountinfo"]

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    mnt_id: int
    parent_id: int
    major: int
    minor: int
    #: The directory of the filesystem mounted here (``/`` for a whole filesystem).
    root: str
    mount_point: str
    fstype: str
    source: str


def _unescape(raw: bytes) -> str:
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def parse_mountinfo(data: bytes) -> tuple[Mount, ...]:
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            out.append(Mount(mnt_id=int(fields[0]), parent_id=int(fields[1]), major=int(major), minor=int(minor),
                             root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
                             fstype=fields[sep + 1].decode(errors="replace"), source=_unescape(fields[sep + 2])))
        except (ValueError, IndexError):
            raise ValueError(f"mountinfo: cannot parse {line[:200]!r}") from None
    return tuple(out)


def read_mountinfo(pid: int, *, proc: ProcDir | None = None) -> tuple[Mount, ...]:
    return parse_mountinfo((proc or ProcDir(pid)).read("mountinfo"))
