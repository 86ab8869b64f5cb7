"""``/proc/PID/auxv``: the ELF auxiliary vector the kernel gave the process at exec.

The file is ``mm->saved_auxv`` as native (type, value) pairs of u64 on
x86_64, up to and including the ``AT_NULL`` pair.  The restorer hands the raw
vector back through ``prctl(PR_SET_MM, PR_SET_MM_MAP)`` (``auxv``/``auxv_size``
of ``struct prctl_mm_map``), so :class:`Auxv` keeps the bytes as read.

Quirks: reading it needs ptrace access (PTRACE_MODE_READ_FSCREDS); for a
kernel thread or a zombie (no ``mm``) the kernel answers ESRCH although the
process exists — :func:`read_auxv` returns an empty vector then.  The vector
can be edited later only by PR_SET_MM_MAP, so it is what exec produced plus
whatever a restorer set.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ._proc import ProcDir

__all__ = ["AT", "Auxv", "parse_auxv", "read_auxv"]

_PAIR = struct.Struct("=QQ")


class AT(enum.IntEnum):
    """``AT_*`` entry types (include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h)."""

    NULL = 0
    IGNORE = 1
    EXECFD = 2
    PHDR = 3
    PHENT = 4
    PHNUM = 5
    PAGESZ = 6
    BASE = 7
    FLAGS = 8
    ENTRY = 9
    NOTELF = 10
    UID = 11
    EUID = 12
    GID = 13
    EGID = 14
    PLATFORM = 15
    HWCAP = 16
    CLKTCK = 17
    SECURE = 23
    BASE_PLATFORM = 24
    RANDOM = 25
    HWCAP2 = 26
    RSEQ_FEATURE_SIZE = 27
    RSEQ_ALIGN = 28
    HWCAP3 = 29
    HWCAP4 = 30
    EXECFN = 31
    SYSINFO_EHDR = 33
    MINSIGSTKSZ = 51


@dataclass(frozen=True, slots=True)
class Auxv:
    """An auxiliary vector: the raw bytes and the decoded (type, value) pairs.

    ``entries`` stops before ``AT_NULL``; ``raw`` is exactly what the kernel
    returned (terminator included).  Unknown types are kept as plain ints.
    """

    raw: bytes
    entries: tuple[tuple[int, int], ...]

    def get(self, at: int, default: int | None = None) -> int | None:
        """Value of the first entry of type ``at`` (AT_* value), or ``default``."""
        for t, v in self.entries:
            if t == at:
                return v
        return default

    def __getitem__(self, at: int) -> int:
        v = self.get(at)
        if v is None:
            raise KeyError(AT(at) if at in AT._value2member_map_ else at)
        return v

    def __contains__(self, at: object) -> bool:
        return any(t == at for t, _ in self.entries)

    def named(self) -> list[tuple[str, int]]:
        """(name, value) pairs for display (``AT_ENTRY`` …, unknown types as numbers)."""
        return [(f"AT_{AT(t).name}" if t in AT._value2member_map_ else str(t), v) for t, v in self.entries]


def parse_auxv(data: bytes) -> Auxv:
    """Decode an x86_64 auxiliary vector."""
    usable = len(data) - len(data) % _PAIR.size
    entries = []
    for t, v in _PAIR.iter_unpack(data[:usable]):
        if t == AT.NULL:
            break
        entries.append((t, v))
    return Auxv(raw=bytes(data), entries=tuple(entries))


def read_auxv(pid: int, *, proc: ProcDir | None = None) -> Auxv:
    """``/proc/PID/auxv`` (empty for kernel threads and zombies)."""
    return parse_auxv((proc or ProcDir(pid)).read("auxv", no_mm_ok=True))
