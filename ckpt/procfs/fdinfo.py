"""``/proc/PID/fd`` and ``/proc/PID/fdinfo/FD``: open descriptors and their kernel state.

Every fdinfo starts with ``pos``, ``flags`` (octal, ``f_flags`` with
O_CLOEXEC added from the fd table), ``mnt_id`` and, since 5.14, ``ino``.  The
file's own ``show_fdinfo`` then adds kind-specific lines; formats seen on
6.18 (and where they are printed):

* eventfd (fs/eventfd.c): ``eventfd-count: %16llx`` — **hex**, space padded —
  then ``eventfd-id: %d`` and ``eventfd-semaphore: %d``.
* epoll (fs/eventpoll.c), one line per watched fd:
  ``tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x``.
* inotify (fs/notify/fdinfo.c), one line per watch:
  ``inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x
  fhandle-type:%x f_handle:<hex bytes>`` — every number hex, wd too.
* fanotify: a ``fanotify flags:%x event-flags:%x`` line, then one
  ``fanotify ino:… sdev:… mflags:… mask:… ignored_mask:…`` (or ``mnt_id:``,
  ``fsid:``) line per mark; kept as key/value dicts.
* timerfd (fs/timerfd.c): ``clockid: %d``, ``ticks: %llu``,
  ``settime flags: %o``, ``it_value: (%llu, %llu)``, ``it_interval: (…)``.
* signalfd: ``sigmask:\\t%016llx``.
* userfaultfd: ``pending:``, ``total:``, ``API:\\t%Lx:%x:%Lx`` (api,
  features, ioctls — all hex).
* pidfd: ``Pid:`` and ``NSpid:`` (decimal; -1 once the process is reaped).
* any file with POSIX/flock/OFD locks or a lease: ``lock:\\t<as in /proc/locks>``
  (parsed by :mod:`ckpt.procfs.locks`).

Unknown lines are kept as text in :attr:`FdInfo.fields` so a new kernel's
additions never break a dump; the kind-specific properties parse on demand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import TargetError
from ._proc import ProcDir

__all__ = [
    "EpollTarget",
    "InotifyWatch",
    "TimerfdState",
    "FdInfo",
    "parse_fdinfo",
    "read_fdinfo",
    "list_fds",
]

# Lines that repeat, one per watched object: kept in order, not in `fields`.
_REPEATED_PREFIXES = (b"tfd:", b"inotify ", b"fanotify ")
_KV = re.compile(rb"([A-Za-z_][A-Za-z0-9_-]*):\s*(\S+)")


@dataclass(frozen=True, slots=True)
class EpollTarget:
    """One fd registered in an epoll instance (``struct epitem``)."""

    tfd: int
    events: int
    data: int
    pos: int
    ino: int
    sdev: int


@dataclass(frozen=True, slots=True)
class InotifyWatch:
    """One inotify watch; ``f_handle`` lets the restorer reopen the inode by handle."""

    wd: int
    ino: int
    sdev: int
    mask: int
    ignored_mask: int
    fhandle_type: int | None
    f_handle: bytes | None


@dataclass(frozen=True, slots=True)
class TimerfdState:
    clockid: int
    ticks: int
    settime_flags: int
    #: (seconds, nanoseconds) left until the next expiry; (0, 0) if disarmed.
    it_value: tuple[int, int]
    it_interval: tuple[int, int]


@dataclass(frozen=True, slots=True)
class FdInfo:
    """``/proc/PID/fdinfo/FD`` of one descriptor."""

    fd: int
    pos: int
    #: ``f_flags`` (O_ACCMODE, O_APPEND, O_NONBLOCK …) plus O_CLOEXEC.
    flags: int
    mnt_id: int
    ino: int | None
    #: Single ``key: value`` lines after the common ones, values as text.
    fields: Mapping[str, str] = field(hash=False)
    #: Repeated lines (``tfd:``, ``inotify``, ``fanotify``) as (kind, {key: value}).
    records: tuple[tuple[str, Mapping[str, str]], ...] = field(hash=False, default=())
    #: ``lock:`` lines, text as in /proc/locks.
    locks: tuple[str, ...] = ()

    @property
    def scm_fds(self) -> int | None:
        """A unix socket's descriptors in flight in its receive queue (Linux 5.9+); None if not told."""
        v = self.fields.get("scm_fds")
        return None if v is None else int(v)

    @property
    def eventfd_count(self) -> int | None:
        v = self.fields.get("eventfd-count")
        return None if v is None else int(v, 16)

    @property
    def eventfd_semaphore(self) -> bool | None:
        v = self.fields.get("eventfd-semaphore")
        return None if v is None else v != "0"

    @property
    def epoll_targets(self) -> tuple[EpollTarget, ...]:
        return tuple(
            EpollTarget(tfd=int(kv["tfd"]), events=int(kv["events"], 16), data=int(kv["data"], 16),
                        pos=int(kv.get("pos", "0")), ino=int(kv.get("ino", "0"), 16),
                        sdev=int(kv.get("sdev", "0"), 16))
            for kind, kv in self.records if kind == "tfd"
        )

    @property
    def inotify_watches(self) -> tuple[InotifyWatch, ...]:
        out = []
        for kind, kv in self.records:
            if kind != "inotify":
                continue
            handle = kv.get("f_handle")
            out.append(InotifyWatch(
                wd=int(kv["wd"], 16), ino=int(kv["ino"], 16), sdev=int(kv["sdev"], 16),
                mask=int(kv["mask"], 16), ignored_mask=int(kv.get("ignored_mask", "0"), 16),
                fhandle_type=int(kv["fhandle-type"], 16) if "fhandle-type" in kv else None,
                f_handle=bytes.fromhex(handle) if handle else None,
            ))
        return tuple(out)

    @property
    def fanotify_marks(self) -> tuple[Mapping[str, str], ...]:
        """Per-mark lines; the group's ``flags``/``event-flags`` line is left out."""
        return tuple(kv for kind, kv in self.records if kind == "fanotify" and "flags" not in kv)

    @property
    def timerfd(self) -> TimerfdState | None:
        f = self.fields
        if "clockid" not in f or "it_value" not in f:
            return None
        return TimerfdState(
            clockid=int(f["clockid"]), ticks=int(f.get("ticks", "0")),
            settime_flags=int(f.get("settime flags", "0"), 8),
            it_value=_pair(f["it_value"]), it_interval=_pair(f.get("it_interval", "(0, 0)")),
        )

    @property
    def sigmask(self) -> int | None:
        """The signalfd's mask (bit N-1 is signal N)."""
        v = self.fields.get("sigmask")
        return None if v is None else int(v, 16)

    @property
    def uffd_api(self) -> tuple[int, int, int] | None:
        """userfaultfd (api, features, ioctls) as negotiated by UFFDIO_API."""
        v = self.fields.get("API")
        if v is None or "pending" not in self.fields:
            return None
        api, features, ioctls = (int(x, 16) for x in v.split(":"))
        return api, features, ioctls

    @property
    def pidfd_pid(self) -> int | None:
        v = self.fields.get("Pid")
        return None if v is None else int(v)


def _pair(text: str) -> tuple[int, int]:
    a, _, b = text.strip().strip("()").partition(",")
    return int(a), int(b)


def parse_fdinfo(data: bytes, fd: int = -1) -> FdInfo:
    """Parse the bytes of one ``fdinfo`` file; ``fd`` is only recorded."""
    fields: dict[str, str] = {}
    records: list[tuple[str, Mapping[str, str]]] = []
    locks: list[str] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        if line.startswith(_REPEATED_PREFIXES):
            kind = line.split(b":" if line.startswith(b"tfd:") else b" ", 1)[0].decode()
            body = line if kind == "tfd" else line[len(kind) + 1:]
            kv = {k.decode("ascii", "replace"): v.decode("ascii", "replace") for k, v in _KV.findall(body)}
            records.append((kind, MappingProxyType(kv)))
            continue
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        k = key.decode("ascii", "replace")
        v = os.fsdecode(value.strip())
        if k == "lock":
            locks.append(v)
        else:
            fields.setdefault(k, v)
    try:
        pos = int(fields.pop("pos"))
        flags = int(fields.pop("flags"), 8)
        mnt_id = int(fields.pop("mnt_id"))
    except (KeyError, ValueError):
        raise ValueError(f"fdinfo: no pos/flags/mnt_id in {data[:200]!r}") from None
    ino = fields.pop("ino", None)
    return FdInfo(fd=fd, pos=pos, flags=flags, mnt_id=mnt_id, ino=None if ino is None else int(ino),
                  fields=MappingProxyType(fields), records=tuple(records), locks=tuple(locks))


def read_fdinfo(pid: int, fd: int, *, proc: ProcDir | None = None) -> FdInfo:
    """``/proc/PID/fdinfo/FD``.  A descriptor closed meanwhile raises TargetError."""
    return parse_fdinfo((proc or ProcDir(pid)).read(f"fdinfo/{fd}"), fd)


def list_fds(pid: int, *, proc: ProcDir | None = None) -> list[tuple[int, str]]:
    """(fd, readlink target) of every open descriptor of ``pid``, by fd number.

    Descriptors closed between listing the directory and reading their link
    are left out (a running target may close fds at any time); if the process
    itself vanished meanwhile, TargetGone is raised rather than returning a
    silently short list.  Targets look like ``/path``, ``pipe:[INO]``,
    ``socket:[INO]``, ``anon_inode:[eventfd]``, ``/path (deleted)``; a
    newline in a path is returned raw (readlink does not escape).
    """
    proc = proc or ProcDir(pid)
    out: list[tuple[int, str]] = []
    for name in proc.listdir("fd"):
        try:
            out.append((int(name), proc.readlink(f"fd/{name}")))
        except TargetError as exc:
            # ProcDir raises the plain TargetError only for an entry that
            # vanished below a live process: that fd was closed.  TargetGone
            # and AccessDenied (subclasses) are not ours to hide.
            if type(exc) is not TargetError:
                raise
    out.sort()
    return out
