"""What each side of a switch-over has written to disk, so that a lost link or a killed ckpt is resolved later.

The commit protocol (:mod:`ckpt.migrate.source`) keeps at most one copy of
the process runnable.  When the link ends after the source sent "commit"
and before it read "running", or either ckpt dies there, the source cannot
know which copy is the live one: its original stays held (SIGSTOP, which
outlives ckpt) and both sides' records say what happened, so that
``ckpt migrate --recover`` can finish the migration one way or the other
without guessing.

* The **source record** (:class:`SourceRecord`), ``$CKPT_STATE_DIR/migrate/PID.json``
  (0600 in a 0700 directory): the migration's id, the destination, and the
  processes held with their start times.  It is written before the hold and
  the commit, and removed once the outcome is clear (the original
  ended, or resumed).  The ``ckpt migrate`` that wrote it holds an flock on it
  as long as it lives, so ``--recover`` never acts beside it.
* The **destination journal** (:class:`Journal`), ``DIR/.journal/ID.json`` in
  the receiver's directory: ``receiving`` from the first message, ``committed``
  (with the restored root's pid and start time) on the commit and before the
  copy is let go, ``running`` once it is, ``aborted`` when the copy was
  removed.  Each state is written before the step it names is taken
  (atomically; not fsynced: :func:`_write_record` says why).

A receiver answers "outcome" queries for an id from its journal
(:func:`outcome`), even while another migration runs:

==============  ===================================  ======================
journal         receiver of that migration           answer
==============  ===================================  ======================
(none)                                               ``unknown``
``aborted``                                          ``not running``
``running``                                          ``running``
``receiving``   alive (its store's flock is held)    ``in progress``
``receiving``   gone                                 ``not running`` [1]
``committed``   alive                                ``in progress``
``committed``   gone                                 ``running`` if the copy
                                                     (pid, start time) lives,
                                                     else ``not running`` [2]
==============  ===================================  ======================

[1] a copy not let go dies with its receiver (the restore's ptrace stop
kills it).  [2] the receiver died while letting it go.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import stat
import time
from dataclasses import asdict, dataclass, field, replace

from ..errors import CkptError, UsageError

__all__ = ["OUTCOMES", "Journal", "SourceRecord", "new_migration_id", "outcome", "prune", "starttime"]

#: The answers to an "outcome" query.
OUTCOMES = ("running", "not running", "in progress", "unknown")
#: A migration id: 32 hex digits, random (the journal's file name, so checked strictly).
_ID = re.compile(r"[0-9a-f]{32}")
#: Journal entries older than this are removed when a receiver starts.
JOURNAL_DAYS = 30


def new_migration_id() -> str:
    return secrets.token_hex(16)


def valid_id(text: object) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def _write_record(path: str, data: dict) -> None:
    """``data`` as JSON at ``path`` (0600), replacing it atomically: a reader sees the old or the new.

    Not fsynced (it would sit inside the downtime): what a record must outlive is
    the death of the ckpt that wrote it, and the page cache does; a crash of the
    host ends the copy — or the original — it speaks of too, and then a
    record's last state before the crash reads as the process having died.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(data, sort_keys=True).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CkptError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CkptError(f"cannot read {path}: not a migration record")
    return data


def starttime(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks after boot), None when there is no such process or a zombie."""
    from ..procfs.stat import read_stat

    try:
        st = read_stat(pid)
    except (CkptError, OSError):
        return None
    return None if st.state in ("Z", "X") else st.starttime


def _private_dir(path: str) -> str:
    """``path``, made 0700 if missing; refused unless it is a directory of ours that no one else can use."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise UsageError(f"{path}: a directory of migration records must be ours and private (0700)")
    return path


# --- the source's record ----------------------------------------------------------------------------------------


def source_dir() -> str:
    from ..track.base import state_dir

    return os.path.join(state_dir(), "migrate")


@dataclass
class SourceRecord:
    """A switch-over that may end in doubt: enough to resolve it without the ckpt that began it."""

    migration: str
    pid: int
    destination: str                                   # host:port of the receiver
    held: list[tuple[int, int]] = field(default_factory=list)  # (pid, start time) of every process held
    time: float = 0.0                                  # when the hold was taken (time.time())

    @staticmethod
    def path_of(pid: int) -> str:
        return os.path.join(source_dir(), f"{pid}.json")

    def save(self) -> int:
        """Write it; returns the fd of the flock that tells ``--recover`` this migration still runs."""
        fd = self._lock_fd(self.pid, create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CkptError(f"another ckpt is migrating or recovering pid {self.pid}") from None
        try:
            _write_record(self.path_of(self.pid), asdict(self))
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _lock_fd(pid: int, *, create: bool) -> int:
        path = os.path.join(_private_dir(source_dir()) if create else source_dir(), f"{pid}.lock")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o600)

    @classmethod
    def load(cls, pid: int) -> SourceRecord | None:
        data = _read_json(cls.path_of(pid))
        if data is None:
            return None
        try:
            rec = cls(str(data["migration"]), int(data["pid"]), str(data["destination"]),
                      [(int(p), int(s)) for p, s in data.get("held", [])], float(data.get("time", 0.0)))
        except (KeyError, TypeError, ValueError):
            raise CkptError(f"cannot read {cls.path_of(pid)}: not a migration record") from None
        if not valid_id(rec.migration) or rec.pid != pid:
            raise CkptError(f"cannot read {cls.path_of(pid)}: not a migration record")
        return rec

    @classmethod
    def lock(cls, pid: int) -> int:
        """Take the record's flock for ``--recover``: refused while its ``ckpt migrate`` (or another recovery) runs."""
        if not os.path.exists(cls.path_of(pid)):
            raise UsageError(f"no migration of pid {pid} is in doubt here (no record in {source_dir()})")
        fd = cls._lock_fd(pid, create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"the ckpt migrate of pid {pid} is still running: it resolves the switch-over itself",
                             hint="wait for it to end; run --recover if it says the outcome is in doubt") from None
        return fd

    @classmethod
    def remove(cls, pid: int) -> None:
        """The outcome is clear: the record goes (its lock file with it, by its holder)."""
        for name in (f"{pid}.json", f"{pid}.lock"):
            try:
                os.unlink(os.path.join(source_dir(), name))
            except FileNotFoundError:
                pass

    def live(self) -> list[int]:
        """The held processes that are still the ones held (same start time)."""
        return [p for p, start in self.held if starttime(p) == start]

    @classmethod
    def sweep(cls) -> list[int]:
        """Remove the records no one needs any more: their ``ckpt migrate`` is gone (the flock is free) and so is
        every process they held (ended, by ``--recover`` or by hand).  Returns their pids."""
        try:
            names = os.listdir(source_dir())
        except FileNotFoundError:
            return []
        removed = []
        for name in names:
            stem, _, ext = name.partition(".")
            if ext != "json" or not stem.isdigit():
                continue
            pid = int(stem)
            try:
                fd = cls._lock_fd(pid, create=False)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                rec = cls.load(pid)
                if rec is not None and not rec.live():
                    cls.remove(pid)
                    removed.append(pid)
            except (OSError, CkptError):
                pass  # still in use, or not ours to judge
            finally:
                os.close(fd)
        return removed


# --- the destination's journal ----------------------------------------------------------------------------------


def journal_dir(root: str) -> str:
    return os.path.join(root, ".journal")


@dataclass
class Journal:
    """One migration at a receiver, as the steps were taken (the module docstring)."""

    migration: str
    source_pid: int
    store: str
    state: str = "receiving"  # receiving, committed, running, aborted
    pid: int = 0              # the restored root, from "committed" on
    starttime: int = 0
    time: float = 0.0

    def path(self, root: str) -> str:
        return os.path.join(journal_dir(root), f"{self.migration}.json")

    def set(self, root: str, state: str, *, pid: int = 0) -> None:
        """Record ``state`` before the step it names is taken."""
        new = replace(self, state=state, time=time.time(),
                      **({"pid": pid, "starttime": starttime(pid) or 0} if pid else {}))
        _private_dir(journal_dir(root))
        _write_record(self.path(root), asdict(new))
        self.state, self.time, self.pid, self.starttime = new.state, new.time, new.pid, new.starttime  # (once on disk)

    @classmethod
    def load(cls, root: str, migration: str) -> Journal | None:
        if not valid_id(migration):
            return None
        data = _read_json(os.path.join(journal_dir(root), f"{migration}.json"))
        if data is None:
            return None
        try:
            return cls(str(data["migration"]), int(data["source_pid"]), str(data["store"]), str(data["state"]),
                       int(data.get("pid", 0)), int(data.get("starttime", 0)), float(data.get("time", 0.0)))
        except (KeyError, TypeError, ValueError):
            raise CkptError(f"cannot read the journal entry of migration {migration} in {journal_dir(root)}") from None


def _receiver_alive(store: str) -> bool:
    """Whether the receiver of ``store`` still works in it (its flock is held)."""
    from ..image.store import hold_dir

    try:
        fd = hold_dir(store)
    except OSError:
        return False  # removed: that receiver is done with it
    if fd is None:
        return True
    os.close(fd)
    return False


def outcome(root: str, migration: str) -> tuple[str, Journal | None]:
    """What the receiver at ``root`` knows of ``migration``: one of :data:`OUTCOMES` (module docstring)."""
    j = Journal.load(root, migration)
    if j is None:
        return "unknown", None
    if j.state == "aborted":
        return "not running", j
    if j.state == "running":
        return "running", j
    if _receiver_alive(j.store):
        return "in progress", j
    if j.state == "committed" and j.pid and starttime(j.pid) == j.starttime:
        return "running", j
    return "not running", j


def prune(root: str, days: int = JOURNAL_DAYS) -> None:
    """Remove journal entries older than ``days`` (a receiver keeps answering for a month)."""
    jdir = journal_dir(root)
    try:
        entries = list(os.scandir(jdir))
    except FileNotFoundError:
        return
    cutoff = time.time() - days * 86400
    for e in entries:
        try:
            if e.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(e.path)
        except OSError:
            pass
