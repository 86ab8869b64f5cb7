"""uffd-wp: asynchronous userfaultfd write-protect + PAGEMAP_SCAN, the atomic get-and-clear (DESIGN §2).

How a target is tracked, and why each step is as it is:

1. ``userfaultfd(O_CLOEXEC|O_NONBLOCK)`` is *injected*: a userfaultfd acts on
   the memory of the process that created it.  The target is frozen only for
   the three short injections (create, park, close), about a millisecond.
2. We take it with ``pidfd_getfd`` and do ``UFFDIO_API`` (WP_ASYNC |
   WP_UNPOPULATED) and every ``UFFDIO_REGISTER`` from our side; WP faults are
   then resolved inside the kernel and the target never waits for us.
3. The target's copy is *parked* at a high descriptor with an injected
   ``fcntl(fd, F_DUPFD_CLOEXEC, N)``, N ≤ soft RLIMIT_NOFILE − 1 (larger gives
   EINVAL), and the original closed.  Never ``dup3`` onto a number: it silently
   closes whatever the target had there.  The parked copy keeps tracking alive
   between ``ckpt`` invocations; a later process re-attaches with
   ``pidfd_getfd(parked)`` after checking that it is still
   ``anon_inode:[userfaultfd]`` with the inode recorded at creation.  A second
   ``UFFDIO_API`` on it gives EINVAL, so it is skipped.
   Before it is parked it gets ckpt's mark, ``O_APPEND`` in its file flags
   (:data:`PARK_MARK`), then ``UFFDIO_API``: a userfaultfd cannot be made with
   O_APPEND and the flag means nothing to it, so no program has one, and
   ``/proc/PID/fdinfo`` shows both the flag and the features to any later run.
   That is how the next ``ckpt`` run on the process recognises a tracker whose
   state file a killed run never wrote (:func:`clean_leftovers`).  For the few
   microseconds between the injected ``userfaultfd()`` and the mark, a journal
   in the state directory names the descriptor it gets (the lowest free one).
4. Each collection reads ``/proc/PID/maps`` for the selected ranges and asks
   the *kernel*, not our memory nor a diff of maps, which of them are not
   registered: one PAGEMAP_SCAN (no clearing) for pages of VMAs without
   PAGE_IS_WPALLOWED.  Unregistered ones appear all the time — new mmap, brk
   growth, thread stack, moved by mremap, replaced by MAP_FIXED (whose maps line
   may be the old one's letter for letter).  Only those are registered (one
   UFFDIO_REGISTER per run of touching ones; re-registering an already
   registered range with the same userfaultfd succeeds and keeps its
   protection: measured) and reported wholly dirty.  Then ONE
   ``PM_SCAN_WP_MATCHING`` scan *without* CHECK_WPASYNC gets and clears the whole
   span: it skips an unregistered VMA instead of failing with EPERM after
   clearing what it walked before it.  A VMA replaced between the two scans is
   skipped this time and found unregistered — wholly dirty — by the next
   collection, like one replaced just after a collection; a frozen target (the
   final dump) has neither.  So a collection costs a few ioctls however many
   mappings the process has (30,745 here), plus one per changed run.  A run the
   kernel will not register goes range by range through the per-VMA path
   (``CHECK_WPASYNC`` scan, register, scan), which ``peek`` uses throughout;
   a scan that failed there after clearing part of a range that changed under
   us is covered the same way: the whole range is reported dirty.
5. Written-but-not-present pages (MADV_DONTNEED) are reported as holes.
   The get+clear asks with masks that are exactly PAGE_IS_WRITTEN: that is the
   kernel's fast path, right on every kernel, whereas its generic path (any
   other mask) reports a written-then-zapped pte, or a zapped huge PMD, as
   clean on kernels without commits 07b4377bdbe7 and 40de8160ca7f (Ubuntu's
   6.8, for one) — writes lost for good.  Which written pages are present is
   asked afterwards, without clearing, over the span of the written runs:
   PAGE_IS_PRESENT only, since the clear has just put a uffd-wp marker (a
   swap-like entry, PAGE_IS_SWAPPED) on every dropped page it protected.  A
   written page swapped out meanwhile is counted with the holes (the dump
   treats both alike: copied, or left out when it no longer exists).

Tracking is lost — :class:`~ckpt.track.base.TrackingLost` — when the parked
copy is closed or replaced while nobody else holds one (the kernel then drops
every registration at once), or when the target execs (the descriptor is
CLOEXEC; an old pagemap descriptor then gives ESRCH).

A target of another uid (``vm.unprivileged_userfaultfd = 0``, the target without
CAP_SYS_PTRACE) may create only a user-mode-only userfaultfd (``UFFD_USER_MODE_ONLY``):
ckpt asks for one when the plain call gives EPERM.  With WP_ASYNC no fault ever
waits on the userfaultfd, so it tracks the same — writes the kernel makes into
tracked pages (``read()`` into a buffer) included (measured).

The calling process can be tracked too (``pid=None``): ``userfaultfd()`` is
called directly and ``/proc/self/pagemap`` scanned; nothing is parked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from ..control.seize import freeze
from ..errors import AccessDenied, CkptError, TargetError, TargetGone, translate_oserror
from ..kernel import pagemap as pm
from ..kernel import uffd
from ..kernel.arch_x86_64 import PAGE_SIZE
from ..kernel.pidfd import pidfd_getfd, pidfd_open
from ..kernel.resource import RLIM_INFINITY, RLIMIT_NOFILE
from ..procfs.fdinfo import read_fdinfo
from ..procfs.limits import read_limits
from ..procfs.maps import Vma, read_maps
from ..procfs.task import read_starttime
from .. import testpoint
from .base import (
    DirtySet, Interval, RangeSpec, Run, Tracker, TrackingLost, TrackingState, VmaDirty, forget_the_dead, select_ranges,
    state_dir, subtract_intervals, tracking_states,
)

__all__ = ["UFFD_FEATURES", "PARK_FD_HIGHEST", "PARK_FD_LOWEST", "PARK_MARK", "UFFD_LINK", "UffdWpTracker",
           "find_userfaultfds", "parked_userfaultfds", "clean_leftovers"]

#: Asked of UFFDIO_API: in-kernel fault resolution, markers on never-populated ptes.
UFFD_FEATURES = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED
#: Highest descriptor we park at: a larger number would grow the target's fd
#: table to that size (8 bytes per slot) even under a limit of 1 M.
PARK_FD_HIGHEST = 1023
#: A marked userfaultfd at this number or above is taken for a parked one without asking who else
#: holds it (:func:`parked_userfaultfds`): ckpt parks at the highest free number up to
#: PARK_FD_HIGHEST, while a running ckpt (or a program using :class:`~ckpt.track.WriteWatch`)
#: holds its own copy at its lowest free one.
PARK_FD_LOWEST = 64
#: ckpt's mark on the userfaultfds it parks (module doc, 3).
PARK_MARK = os.O_APPEND
UFFD_LINK = "anon_inode:[userfaultfd]"
#: fdinfo's features word has this bit once UFFDIO_API was done (fs/userfaultfd.c).
_UFFD_FEATURE_INITIALIZED = 1 << 31

_SCAN_CLEAR = pm.PM_SCAN_WP_MATCHING | pm.PM_SCAN_CHECK_WPASYNC
_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C off while the target has a half-made tracker (created but not parked)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def find_userfaultfds(pid: int) -> dict[int, int]:
    """``{fd: inode}`` of every userfaultfd open in ``pid`` (from /proc/PID/fd)."""
    out: dict[int, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        raise TargetGone(pid, f"process {pid} does not exist") from None
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == UFFD_LINK:
                out[int(name)] = os.stat(f"/proc/{pid}/fd/{name}").st_ino
        except OSError:
            continue  # closed meanwhile
    return out


def _parked_inode(pid: int, fd: int) -> int | None:
    """Inode of the userfaultfd at ``fd`` in ``pid``, or None when that fd is anything else (or closed)."""
    try:
        if os.readlink(f"/proc/{pid}/fd/{fd}") != UFFD_LINK:
            return None
        return os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    except OSError:
        return None


def _mark_and_features(pid: int, fd: int) -> tuple[bool, int] | None:
    """(carries ckpt's mark, features set by UFFDIO_API) of the userfaultfd at ``fd``; None if unreadable."""
    try:
        info = read_fdinfo(pid, fd)
    except (OSError, TargetError):
        return None
    api = info.uffd_api
    if api is None:
        return None
    return bool(info.flags & PARK_MARK), api[1] & ~_UFFD_FEATURE_INITIALIZED


def parked_userfaultfds(pid: int) -> dict[int, int]:
    """``{fd: inode}`` of the userfaultfds ckpt parked in ``pid``: marked, with ckpt's features, at
    PARK_FD_LOWEST or above — read from /proc alone, cheap enough while a dump holds ``pid`` frozen.

    A child the tracked process forked holds the same ones (inherited).  Whether a
    live ckpt run or a state file still owns each is :func:`clean_leftovers`' question.
    """
    out = {}
    for fd, inode in find_userfaultfds(pid).items():
        if fd >= PARK_FD_LOWEST and _mark_and_features(pid, fd) == (True, UFFD_FEATURES):
            out[fd] = inode
    return out


@dataclass(frozen=True)
class _Journal:
    """"ckpt (``holder``) is creating a userfaultfd in ``pid``; it gets fd ``fd``" — written while the
    target is frozen, before the injection, removed once the tracker is marked and parked.

    Only for the moment the userfaultfd exists without ckpt's mark: a run killed there
    leaves this file, which names the exact descriptor (the lowest free one, the
    target being frozen), so the next run closes that one and nothing else.
    """

    pid: int
    start_time: int
    fd: int
    holder: int
    holder_start: int

    @staticmethod
    def path(pid: int) -> str:
        return os.path.join(state_dir(), f"creating-{pid}.json")

    @classmethod
    def begin(cls, pid: int, start_time: int) -> "_Journal | None":
        """Write it (None when the state directory cannot be written: the window stays unguarded)."""
        taken = {int(n) for n in os.listdir(f"/proc/{pid}/fd")}
        fd = next(n for n in range(len(taken) + 1) if n not in taken)
        me = cls(pid, start_time, fd, os.getpid(), read_starttime(os.getpid()))
        return me if me._write() else None

    def _write(self) -> bool:
        try:
            os.makedirs(state_dir(), exist_ok=True)
            with open(self.path(self.pid), "w") as f:
                f.write(json.dumps(asdict(self)))
        except OSError:
            return False
        return True

    def moved(self, fd: int) -> "_Journal":
        """The userfaultfd got another number (a descriptor table shared with a process not frozen)."""
        if fd == self.fd:
            return self
        me = _Journal(self.pid, self.start_time, fd, self.holder, self.holder_start)
        me._write()
        return me

    def end(self) -> None:
        try:
            os.unlink(self.path(self.pid))
        except OSError:
            pass

    @classmethod
    def left_for(cls, pid: int, start_time: int) -> "_Journal | None":
        """The journal a run that is gone left for this process (None: none, or its writer still runs)."""
        try:
            with open(cls.path(pid)) as f:
                me = cls(**json.loads(f.read()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            alive = read_starttime(me.holder) == me.holder_start
        except (TargetGone, OSError):
            alive = False
        if alive:
            return None
        if me.pid != pid or me.start_time != start_time:
            me.end()  # for an earlier process of that pid: nothing of it is left
            return None
        return me


def _held_elsewhere(pid: int, fds: dict[int, int]) -> set[int]:
    """Which of ``pid``'s userfaultfds (``{fd: inode}``) another process holds at another number.

    Nobody but the tracked process and the children it forked (which inherit the
    parked copy at the same number) holds a parked tracker, unless a ckpt run is
    working with it now (``ckpt watch``, a pre-dump: a copy at its own lowest free
    number), or ``pid`` itself holds a copy of a tracker parked in another process
    (a program using :class:`~ckpt.track.WriteWatch`).  Either way it is no leftover.
    One walk of every process's descriptors.
    """
    by_inode = {ino: fd for fd, ino in fds.items()}
    held: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == pid:
            continue
        try:
            names = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}") != UFFD_LINK:
                    continue
                ino = os.stat(f"/proc/{name}/fd/{fd}").st_ino
            except OSError:
                continue
            if ino in by_inode and by_inode[ino] != int(fd):
                held.add(by_inode[ino])
    return held


def clean_leftovers(pid: int, keep: Collection[tuple[int, int]] = ()) -> list[str]:
    """Close the trackers killed ckpt runs left in ``pid``; a note for each (kill-safety, issue 14).

    A leftover is a userfaultfd with ckpt's mark and features (module doc, 3) — or the
    unmarked one an unfinished creation journaled — that no state file names (fd
    and inode: a child's inherited copy of its parent's tracker is named by the
    parent's), that is not in ``keep`` (fd, inode), and that no other process holds
    at another number (:func:`_held_elsewhere`: then a ckpt run is using it).  Each
    is checked again while the target is frozen, then closed by an injected
    ``close``: the last copy gone, the kernel drops its write-protection and the
    target runs on as if never tracked.  A userfaultfd of the program's own has no
    mark and is never touched.
    """
    forget_the_dead()
    try:
        start_time = read_starttime(pid)
        found = find_userfaultfds(pid)
    except TargetGone:
        return []
    journal = _Journal.left_for(pid, start_time)
    known = set(keep) | {(st.parked_fd, st.uffd_inode) for st in tracking_states() if st.method == "uffd-wp"}
    stray = {fd: ino for fd, ino in found.items() if (fd, ino) not in known}
    ours = {fd: ino for fd, ino in stray.items() if _mark_and_features(pid, fd) == (True, UFFD_FEATURES)}
    if journal is not None and journal.fd in stray:
        mark = _mark_and_features(pid, journal.fd)
        if mark is not None and (mark[0] or mark[1] == 0):  # marked, or not even through UFFDIO_API yet
            ours[journal.fd] = stray[journal.fd]
    if ours:
        in_use = _held_elsewhere(pid, ours)
        ours = {fd: ino for fd, ino in ours.items() if fd not in in_use}
    notes: list[str] = []
    if ours:
        try:
            with _signals_held(), freeze(pid, start_time=start_time) as frozen:
                inj = frozen.injector()
                for fd, ino in sorted(ours.items()):
                    if _parked_inode(pid, fd) == ino:  # still that file: the frozen target cannot swap it now
                        inj.close(fd)
                        notes.append(f"closed fd {fd} of process {pid}, a dirty-tracking userfaultfd that an "
                                     "interrupted ckpt run had left there")
        except TargetGone:
            return notes
    if journal is not None:
        journal.end()
    return notes


def _mark(fd: int) -> None:
    """Put ckpt's mark on the userfaultfd ``fd`` (our copy: the file, and so its flags, is the target's too)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | PARK_MARK)


class UffdWpTracker(Tracker):
    """Tracks one process (``pid``; None = the calling process) with async uffd-wp."""

    method = "uffd-wp"

    def __init__(self, pid: int | None = None) -> None:
        self.own = pid is None
        super().__init__(os.getpid() if pid is None else pid)
        self.start_time = read_starttime(self.pid)
        self.uffd = -1
        self.inode = 0
        self.parked_fd = -1
        self._pagemap = -1

    # --- setting up ---

    def start(self, ranges: RangeSpec | None = None) -> None:
        """Create the userfaultfd, register every selected VMA and write-protect it (the first clear)."""
        self.ranges = ranges or RangeSpec()
        try:
            if self.own:
                self.uffd = uffd.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
                uffd.uffd_api(self.uffd, UFFD_FEATURES)
            else:
                self._inject_and_park()
                testpoint.point("uffd-parked")
            self.inode = os.fstat(self.uffd).st_ino
            self._open_pagemap()
            self._walk(clear=True)
        except BaseException:
            self.stop()
            raise

    @classmethod
    def attach(cls, state: TrackingState) -> "UffdWpTracker":
        """Take over tracking left parked by an earlier process (TrackingLost when it is gone)."""
        self = cls(state.pid)
        if self.start_time != state.start_time:
            raise TargetGone(state.pid, f"process {state.pid} is not the one tracked (its pid was reused)")
        self.ranges = state.ranges
        pidfd = pidfd_open(state.pid)
        try:
            fd = pidfd_getfd(pidfd, state.parked_fd)
        except OSError as e:
            if e.errno == errno.EBADF:
                raise TrackingLost(state.pid, f"the target closed its userfaultfd (fd {state.parked_fd}), or exec'd") from None
            raise translate_oserror(e, state.pid, "taking the userfaultfd of") from e
        finally:
            os.close(pidfd)
        link = os.readlink(f"/proc/self/fd/{fd}")
        inode = os.fstat(fd).st_ino
        if link != UFFD_LINK or inode != state.uffd_inode:
            os.close(fd)
            raise TrackingLost(state.pid, f"fd {state.parked_fd} is now {link} (inode {inode}), "
                                          f"not the userfaultfd with inode {state.uffd_inode}")
        self.uffd, self.inode, self.parked_fd = fd, inode, state.parked_fd
        _mark(fd)  # parked by a ckpt from before the mark: recognisable from now on
        self._open_pagemap()
        return self

    def _open_pagemap(self) -> None:
        path = "/proc/self/pagemap" if self.own else f"/proc/{self.pid}/pagemap"
        try:
            self._pagemap = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise translate_oserror(e, self.pid, "opening the pagemap of") from e

    def _inject_and_park(self) -> None:
        """Create the userfaultfd in the frozen target, take a copy, mark it, UFFDIO_API, park it (module doc, 1-3)."""
        # From /proc: prlimit64 on a process of another uid needs CAP_SYS_RESOURCE, even to read.
        soft, _ = read_limits(self.pid)[RLIMIT_NOFILE]
        highest = min(PARK_FD_HIGHEST, (soft if soft != RLIM_INFINITY else 1 << 20) - 1)
        t0 = time.monotonic()
        try:
            with _signals_held(), freeze(self.pid, start_time=self.start_time) as frozen:
                inj = frozen.injector()
                journal = _Journal.begin(self.pid, self.start_time)
                try:
                    tfd = self._create(inj)
                except BaseException:
                    if journal is not None:
                        journal.end()
                    raise
                if journal is not None:
                    journal = journal.moved(tfd)
                try:
                    pidfd = pidfd_open(self.pid)
                    try:
                        self.uffd = pidfd_getfd(pidfd, tfd)
                    finally:
                        os.close(pidfd)
                    _mark(self.uffd)
                    uffd.uffd_api(self.uffd, UFFD_FEATURES)
                    self.parked_fd = self._park(inj, tfd, highest)
                finally:
                    inj.close(tfd)
                    if journal is not None:  # (not when the close failed: the next run closes what is left)
                        journal.end()  # marked and parked: recognisable without it from now on
        finally:
            self.frozen_seconds += time.monotonic() - t0

    def _create(self, inj) -> int:  # noqa: ANN001 - the frozen target's Injector
        """userfaultfd() in the target; user-mode-only where the target may not have another (module doc)."""
        try:
            return inj.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise translate_oserror(e, self.pid, "creating a userfaultfd in") from e
        try:
            return inj.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
        except OSError as e:
            if e.errno == errno.EPERM:  # the target is traced fine: it is the userfaultfd it may not have
                raise AccessDenied(self.pid, f"process {self.pid} may not create a userfaultfd, not even a "
                                             "user-mode-only one (a security module, or an old kernel?)",
                                   hint="track it with --track hash") from e
            raise translate_oserror(e, self.pid, "creating a userfaultfd in") from e

    def _park(self, inj, tfd: int, highest: int) -> int:  # noqa: ANN001 - an Injector
        """A copy of ``tfd`` at the highest free descriptor from ``highest`` down."""
        want = highest
        while True:
            try:
                return inj.fcntl(tfd, fcntl.F_DUPFD_CLOEXEC, want)
            except OSError as e:  # every number from `want` up is taken: look lower
                if e.errno not in (errno.EMFILE, errno.EINVAL) or want <= tfd + 1:
                    raise translate_oserror(e, self.pid, "parking the userfaultfd in") from e
                want = max(tfd + 1, want - 64)

    # --- collecting ---

    def collect(self) -> DirtySet:
        """Get and clear the pages written since the last collection (see base: clear, then copy)."""
        return self._walk(clear=True)

    def peek(self) -> DirtySet:
        """The pages written since the last collection, without clearing (PAGEMAP_SCAN without WP_MATCHING)."""
        return self._walk(clear=False)

    def _lost_or_gone(self, e: OSError) -> CkptError:
        """An ESRCH from the pagemap: the target exited, or exec'd into a new address space."""
        try:
            same = read_starttime(self.pid) == self.start_time
        except TargetGone:
            same = False
        if same:
            return TrackingLost(self.pid, "the target exec'd (its address space was replaced)")
        return TargetGone(self.pid, f"process {self.pid} exited while its written pages were collected")

    def _maps(self) -> list[Vma]:
        if self.uffd < 0:
            raise CkptError(f"tracking of process {self.pid} is not running (stopped, or never started)")
        try:
            return read_maps(self.pid)
        except OSError as e:
            raise translate_oserror(e, self.pid, "reading the maps of") from e

    def _walk(self, *, clear: bool) -> DirtySet:
        maps = self._maps()
        selected = select_ranges(maps, self.ranges.include, self.ranges.exclude)
        t0 = time.perf_counter()
        if clear:
            out = self._collect(selected)
        else:
            out = [self._one(start, end, vma, clear) for (start, end), vma in selected]
        elapsed = time.perf_counter() - t0
        gone = self._previous.gone([r for r, _ in selected])
        return DirtySet(self.method, tuple(v for v in out if v is not None), gone, elapsed, time.monotonic())

    def _collect(self, selected: list[tuple[Interval, Vma]]) -> list[VmaDirty | None]:
        """Get+clear every selected range with a handful of scans, however many VMAs there are (module doc, 4).

        The kernel says which ranges are not registered (one scan for VMAs without
        PAGE_IS_WPALLOWED); only those go one by one through :meth:`_one` (register,
        protect, wholly dirty).  Then one WP_MATCHING scan without CHECK_WPASYNC
        clears the whole span: an unregistered VMA in it is skipped, never failed on
        half-way.  One that appears between the two scans is skipped this time and
        found unregistered — wholly dirty — by the next collection, as one that
        appears after the collection is; a frozen target (the final dump) has none.
        """
        if not selected:
            return []
        lo, hi = selected[0][0][0], selected[-1][0][1]
        try:
            unregistered = [(r.start, r.end) for r in pm.pagemap_scan(
                self._pagemap, lo, hi, category_inverted=pm.PAGE_IS_WPALLOWED, category_mask=pm.PAGE_IS_WPALLOWED,
                return_mask=pm.PAGE_IS_WPALLOWED, vec_len=512)]
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise self._lost_or_gone(e) from e
            raise translate_oserror(e, self.pid, "scanning the pagemap of") from e
        ranges = [r for r, _ in selected]
        changed = _overlapping(ranges, unregistered)
        out: dict[int, VmaDirty | None] = {}
        fresh = self._register_runs(sorted(changed), ranges)
        for i in sorted(changed - fresh):  # refused as a run: one by one, each with its own verdict
            (start, end), vma = selected[i]
            out[i] = self._one(start, end, vma, True)
        try:
            written, holes = self._scan(lo, hi, pm.PM_SCAN_WP_MATCHING)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise self._lost_or_gone(e) from e
            raise translate_oserror(e, self.pid, "scanning the pagemap of") from e
        w_by = _runs_by_range(ranges, written)
        h_by = _runs_by_range(ranges, holes)
        for i in fresh:
            # Registered just now: every page is dirty; copy what is not a hole (as _one does).
            (start, end), vma = selected[i]
            h = h_by.get(i, ())
            w = [(a, (b - a) // PAGE_SIZE) for a, b in
                 subtract_intervals((start, end), [(x, x + n * PAGE_SIZE) for x, n in h]) if b > a]
            out[i] = VmaDirty(start, end, vma.path, tuple(w), h, new=True)
        return [out[i] if i in out else VmaDirty(start, end, vma.path, w_by.get(i, ()), h_by.get(i, ()))
                for i, ((start, end), vma) in enumerate(selected)]

    def _register_runs(self, indexes: list[int], ranges: list[Interval]) -> set[int]:
        """Register the ranges at ``indexes`` (sorted), one UFFDIO_REGISTER per run of touching ones;
        the indexes registered (a run the kernel refuses is left to :meth:`_one`, range by range)."""
        done: set[int] = set()
        runs: list[list[int]] = []
        for i in indexes:
            if runs and ranges[runs[-1][-1]][1] == ranges[i][0]:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            start, end = ranges[run[0]][0], ranges[run[-1]][1]
            try:
                uffd.register(self.uffd, start, end - start, uffd.UFFDIO_REGISTER_MODE_WP)
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise self._lost_or_gone(e) from e
                continue
            done.update(run)
        return done

    def _scan(self, start: int, end: int, flags: int) -> tuple[list[Run], list[Run]]:
        """(written and populated, written and dropped) runs of ``[start, end)``; masks exactly
        PAGE_IS_WRITTEN for the get (+clear), then a plain presence scan (module doc, 5)."""
        dirty = [(r.start, r.end) for r in pm.pagemap_scan(
            self._pagemap, start, end, flags=flags, category_mask=pm.PAGE_IS_WRITTEN,
            return_mask=pm.PAGE_IS_WRITTEN, vec_len=512)]
        if not dirty:
            return [], []
        populated = [(r.start, r.end) for r in pm.pagemap_scan(
            self._pagemap, dirty[0][0], dirty[-1][1], category_mask=pm.PAGE_IS_PRESENT,
            return_mask=pm.PAGE_IS_PRESENT, vec_len=512)]
        return _split_by(dirty, populated)

    def _one(self, start: int, end: int, vma: Vma, clear: bool) -> VmaDirty | None:
        flags = _SCAN_CLEAR if clear else pm.PM_SCAN_CHECK_WPASYNC
        try:
            written, holes = self._scan(start, end, flags)
            return VmaDirty(start, end, vma.path, tuple(written), tuple(holes))
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise self._lost_or_gone(e) from e
            if e.errno != errno.EPERM:
                return self._vanished_or_untracked(start, end, vma, e)
        # Not registered (yet, or any more): register it, protect it, report all of it.
        try:
            uffd.register(self.uffd, start, end - start, uffd.UFFDIO_REGISTER_MODE_WP)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise self._lost_or_gone(e) from e
            return self._vanished_or_untracked(start, end, vma, e)
        try:
            _, holes = self._scan(start, end, flags)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise self._lost_or_gone(e) from e
            return self._vanished_or_untracked(start, end, vma, e)
        # Every page is dirty: copy what is not a hole (a scan that failed half-way may
        # have cleared part of this range before, so do not trust the scan's "written").
        written = [(s, (e - s) // PAGE_SIZE) for s, e in
                   subtract_intervals((start, end), [(h, h + n * PAGE_SIZE) for h, n in holes]) if e > s]
        return VmaDirty(start, end, vma.path, tuple(written), tuple(holes), new=True)

    def _vanished_or_untracked(self, start: int, end: int, vma: Vma, err: OSError) -> VmaDirty | None:
        """A range the kernel will not scan or register: gone meanwhile (None), or tracked by nobody."""
        try:
            still = any(v.start <= start and end <= v.end for v in read_maps(self.pid))
        except TargetGone:
            raise TargetGone(self.pid, f"process {self.pid} exited while its written pages were collected") from err
        if not still:
            return None
        # Wholly dirty every time (DESIGN §2: ranges refusing write-protect are handled without tracking).
        return VmaDirty(start, end, vma.path, ((start, (end - start) // PAGE_SIZE),), (), new=True, untracked=True)

    # --- ending ---

    def state(self) -> TrackingState:
        return TrackingState(self.method, self.pid, self.start_time, self.parked_fd, self.inode,
                             include=self.ranges.include, exclude=self.ranges.exclude)

    def detach(self) -> TrackingState:
        """Close our copy; the parked one keeps tracking alive.  TrackingLost if the target lost it."""
        if self.own:
            raise CkptError("tracking of the calling process cannot outlive its tracker: use stop()")
        state = self.state()
        parked_ok = _parked_inode(self.pid, self.parked_fd) == self.inode
        self._close_ours()
        if not parked_ok:
            raise TrackingLost(self.pid, f"the target closed its copy of the userfaultfd (fd {self.parked_fd})")
        return state

    def stop(self) -> None:
        """Unregister, close the parked copy (checked to be ours first) and ours; idempotent.

        When the last copy closes the kernel drops every registration and
        write-protection; the target carries on unharmed.  A target that exited
        meanwhile is no error here.
        """
        if self.uffd >= 0:
            try:
                self._unregister([r for r, _ in select_ranges(read_maps(self.pid), self.ranges.include,
                                                                self.ranges.exclude)])
            except (TargetGone, OSError):
                pass
        if self.parked_fd >= 0 and not self.own:
            self._close_parked()
        self._close_ours()

    def _unregister(self, ranges: list[Interval]) -> None:
        """Unregister ``ranges`` (sorted): one call per run of touching ones, one per range where that fails
        (a range of another userfaultfd's, or changed meanwhile, refuses the whole call)."""
        spans: list[list[Interval]] = []
        for r in ranges:
            if spans and spans[-1][-1][1] == r[0]:
                spans[-1].append(r)
            else:
                spans.append([r])
        for span in spans:
            try:
                uffd.unregister(self.uffd, span[0][0], span[-1][1] - span[0][0])
                continue
            except OSError:
                pass
            for start, end in span:
                try:
                    uffd.unregister(self.uffd, start, end - start)
                except OSError:
                    pass  # not ours, or gone meanwhile

    def _close_parked(self) -> None:
        t0 = time.monotonic()
        try:
            with _signals_held(), freeze(self.pid, start_time=self.start_time) as frozen:
                # Checked while frozen: the target cannot swap the fd under us now.
                if _parked_inode(self.pid, self.parked_fd) == self.inode:
                    frozen.injector().close(self.parked_fd)
        except TargetGone:
            pass
        finally:
            self.frozen_seconds += time.monotonic() - t0
        self.parked_fd = -1

    def abandon(self) -> None:
        """Drop our copies of the tracker without touching the target (it is gone or dying:
        freezing it to close the parked fd could hang, and its exit closes that fd anyway)."""
        self._close_ours()
        self.parked_fd = -1

    def _close_ours(self) -> None:
        for fd in (self._pagemap, self.uffd):
            if fd >= 0:
                os.close(fd)
        self._pagemap = self.uffd = -1

    def __del__(self) -> None:  # a forgotten tracker must not keep a registration alive
        try:
            self._close_ours()
        except Exception:
            pass


def _split_by(runs: list[tuple[int, int]], inside: list[tuple[int, int]]) -> tuple[list[Run], list[Run]]:
    """Sorted, disjoint ``runs`` cut into the parts inside ``inside`` (sorted, disjoint) and the rest,
    as (start, npages) runs."""
    ins: list[Run] = []
    out: list[Run] = []
    j = 0
    for s, e in runs:
        pos = s
        while j < len(inside) and inside[j][1] <= pos:
            j += 1
        k = j
        while pos < e:
            if k == len(inside) or inside[k][0] >= e:
                out.append((pos, (e - pos) // PAGE_SIZE))
                break
            lo, hi = max(inside[k][0], pos), min(inside[k][1], e)
            if lo > pos:
                out.append((pos, (lo - pos) // PAGE_SIZE))
            ins.append((lo, (hi - lo) // PAGE_SIZE))
            pos = hi
            if inside[k][1] <= e:
                k += 1
    return ins, out


def _overlapping(ranges: list[Interval], others: list[Interval]) -> set[int]:
    """Indexes of the sorted, disjoint ``ranges`` that overlap any of the sorted, disjoint ``others``."""
    hit: set[int] = set()
    j = 0
    for i, (s, e) in enumerate(ranges):
        while j < len(others) and others[j][1] <= s:
            j += 1
        if j < len(others) and others[j][0] < e:
            hit.add(i)
    return hit


def _runs_by_range(ranges: list[Interval], runs: list[Run]) -> dict[int, tuple[Run, ...]]:
    """Sorted ``(start, npages)`` runs cut at the bounds of the sorted, disjoint ``ranges``, by range index;
    parts outside every range are dropped (a scan spans the gaps between ranges)."""
    out: dict[int, list[Run]] = {}
    i = 0
    for s, n in runs:
        e = s + n * PAGE_SIZE
        while i < len(ranges) and ranges[i][1] <= s:
            i += 1
        k = i
        while k < len(ranges) and ranges[k][0] < e:
            lo, hi = max(s, ranges[k][0]), min(e, ranges[k][1])
            out.setdefault(k, []).append((lo, (hi - lo) // PAGE_SIZE))
            if ranges[k][1] > e:
                break
            k += 1
    return {k: tuple(v) for k, v in out.items()}
