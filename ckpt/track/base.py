"""The seam every dirty-tracking back-end plugs into: range selection, the result record, the protocol.

Back-ends (``uffd_wp``, ``soft_dirty``, ``hash``) differ only in how they *get*
and *clear* the written state of a range; which ranges are tracked
(:func:`select_ranges`) and what a collection reports (:class:`DirtySet`) are
shared, so the dumper writes one kind of image whatever the method.

THE CALLER'S RULE — CLEAR, THEN COPY (DESIGN §2, "Tracking lifecycle"):
    ``collect()`` *is* the clear.  Call it first, and only then read the pages
    it names out of the target.  A write that lands after the clear is seen by
    the next ``collect()``, whatever the copy read.  Reading the pages first and
    clearing afterwards loses every write that falls between the two: measured
    29,265 of 65,536 pages lost under two busy writers.
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from ..errors import CkptError, TargetGone, UsageError
from ..kernel.arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX
from ..procfs.maps import SPECIAL_MAPPINGS, Vma
from ..procfs.task import read_starttime

__all__ = [
    "Run", "Interval", "VmaKey", "vma_key", "RangeSpec", "VmaDirty", "DirtySet", "TrackingState", "TrackingLost", "Tracker",
    "select_ranges", "parse_ranges", "format_ranges", "runs_from_pages", "merge_runs", "subtract_intervals",
    "subtract_sorted",
    "STATE_DIR_DEFAULT", "UNFINISHED", "state_dir", "tracking_state_path", "tracking_states", "load_tracking_state",
    "forget_the_dead",
]

#: Where the state of trackers left parked between ckpt runs is kept (override: $CKPT_STATE_DIR).
STATE_DIR_DEFAULT = "/run/ckpt"
#: ``TrackingState.image_id`` of a tracker whose get+clear serves an image not written yet.  Saved
#: before the clear: if that run dies, no parent matches it, so the next delta becomes a full copy
#: instead of missing the writes that run cleared.
UNFINISHED = "(unfinished)"

#: ``(start address, number of pages)``.
Run = tuple[int, int]
#: ``(start, end)`` addresses, end exclusive.
Interval = tuple[int, int]
#: A VMA as maps shows it: (start, end, perms, offset, dev_major, dev_minor, inode).
VmaKey = tuple[int, int, str, int, int, int, int]


def vma_key(v: Vma) -> VmaKey:
    """What tells one VMA from another at the same place: a change of any of it is a new VMA."""
    return (v.start, v.end, v.perms, v.offset, v.dev_major, v.dev_minor, v.inode)


class TrackingLost(CkptError):
    """The tracking state of a process is gone: the next pre-dump must be a full one.

    Raised when the parked userfaultfd was closed or replaced, the target exec'd
    (its address space is a new one), or the saved digests do not belong to it.
    ``reason`` says which, for the warning the caller prints.
    """

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__(f"dirty tracking of process {pid} was lost: {reason}",
                         hint="the next pre-dump will be a full one")
        self.pid = pid
        self.reason = reason


@dataclass(frozen=True)
class RangeSpec:
    """Which parts of the address space to track: ``include`` (None = all selected VMAs) minus ``exclude``."""

    include: tuple[Interval, ...] | None = None
    exclude: tuple[Interval, ...] = ()


def parse_ranges(text: str) -> tuple[Interval, ...]:
    """``"ADDR-ADDR,ADDR-ADDR"`` (hex, with or without 0x) → intervals; UsageError on anything else."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if not sep:
                raise ValueError
            start, end = int(lo, 16), int(hi, 16)
        except ValueError:
            raise UsageError(f"bad address range {part!r}: expected START-END in hex, e.g. 7f0000000000-7f0000100000") from None
        if start >= end or start % PAGE_SIZE or end % PAGE_SIZE:
            raise UsageError(f"bad address range {part!r}: start must be below end and both page-aligned")
        out.append((start, end))
    if not out:
        raise UsageError(f"no address range in {text!r}")
    return tuple(sorted(out))


def format_ranges(spec: RangeSpec) -> str:
    """For messages: ``all``, ``A-B,C-D``, ``all minus X-Y`` …"""
    def fmt(ivs: Sequence[Interval]) -> str:
        return ",".join(f"{s:x}-{e:x}" for s, e in ivs)

    text = "all" if spec.include is None else fmt(spec.include)
    return f"{text} minus {fmt(spec.exclude)}" if spec.exclude else text


def subtract_intervals(base: Interval, holes: Iterable[Interval]) -> list[Interval]:
    """``base`` minus every interval of ``holes``."""
    pieces = [base]
    for hs, he in holes:
        nxt = []
        for s, e in pieces:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        pieces = nxt
    return pieces


def subtract_sorted(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """``a`` minus ``b``, both sorted lists of disjoint intervals (one linear sweep)."""
    out: list[Interval] = []
    j = 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k, pos = j, s
        while k < len(b) and b[k][0] < e:
            if b[k][0] > pos:
                out.append((pos, b[k][0]))
            pos = max(pos, b[k][1])
            k += 1
        if pos < e:
            out.append((pos, e))
    return out


def _trackable(v: Vma) -> bool:
    """Writable private memory, or shared anonymous memory (``/dev/zero (deleted)``, SysV shm).

    Special mappings refuse write-protect (EINVAL) and a read-only shared file
    has no VM_MAYWRITE (EPERM), DESIGN §2; a writable shared *file* mapping's
    content lives in the file, which the dump handles as a file, not as pages.
    """
    if v.path in SPECIAL_MAPPINGS or v.end > TASK_SIZE_MAX or not v.write:
        return False
    if not v.shared:
        return True
    return v.deleted and (v.path == "/dev/zero" or v.path.startswith("/SYSV"))


def select_ranges(maps: Sequence[Vma], include: Sequence[Interval] | None = None,
                  exclude: Sequence[Interval] = ()) -> list[tuple[Interval, Vma]]:
    """The pieces of ``maps`` to track: trackable VMAs, clipped to ``include``, minus ``exclude``.

    Returns ``((start, end), vma)`` pairs sorted by address, one VMA per piece —
    never a piece spanning two VMAs, because a uffd-wp scan must cover one VMA
    at a time.
    """
    if include is None and not exclude:  # the whole process: one piece per trackable VMA, in maps order
        whole = [((v.start, v.end), v) for v in maps if _trackable(v)]
        if all(a[0][1] <= b[0][0] for a, b in zip(whole, whole[1:])):
            return whole
    out: list[tuple[Interval, Vma]] = []
    for v in maps:
        if not _trackable(v):
            continue
        if include is None:
            pieces = [(v.start, v.end)]
        else:
            pieces = [(max(v.start, s), min(v.end, e)) for s, e in include if s < v.end and e > v.start]
        for p in pieces:
            out.extend((q, v) for q in subtract_intervals(p, exclude))
    out.sort(key=lambda x: x[0])
    return out


def runs_from_pages(pages: Iterable[int]) -> tuple[Run, ...]:
    """Sorted page addresses → ``(start, npages)`` runs."""
    runs: list[list[int]] = []
    for a in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] * PAGE_SIZE == a:
            runs[-1][1] += 1
        else:
            runs.append([a, 1])
    return tuple((s, n) for s, n in runs)


def merge_runs(runs: Iterable[Run]) -> tuple[Run, ...]:
    """Sorted runs with touching neighbours joined."""
    out: list[list[int]] = []
    for s, n in runs:
        if out and out[-1][0] + out[-1][1] * PAGE_SIZE == s:
            out[-1][1] += n
        else:
            out.append([s, n])
    return tuple((s, n) for s, n in out)


def _npages(runs: Iterable[Run]) -> int:
    return sum(n for _, n in runs)


@dataclass(frozen=True)
class VmaDirty:
    """What one collection found in one tracked range.

    ``written``: runs of pages written since the last collection and present —
    copy them.  ``holes``: written but no longer present (MADV_DONTNEED) and not
    swapped — their content is what the backing gives again: zero for anonymous
    memory (record a zero run), the file's page for a private file mapping.
    ``new``: the range was not tracked before (new mmap, brk growth, thread
    stack, moved by mremap, replaced by MAP_FIXED): *every* page is dirty, and
    ``written`` + ``holes`` cover the whole range.  ``untracked``: the kernel
    refused to track it; it is reported wholly dirty every time.
    """

    start: int
    end: int
    path: str
    written: tuple[Run, ...] = ()
    holes: tuple[Run, ...] = ()
    new: bool = False
    untracked: bool = False

    @property
    def npages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    @property
    def written_pages(self) -> int:
        return _npages(self.written)

    @property
    def hole_pages(self) -> int:
        return _npages(self.holes)

    @property
    def dirty_pages(self) -> int:
        return self.written_pages + self.hole_pages


@dataclass(frozen=True)
class DirtySet:
    """The result of one get-and-clear over every tracked range.

    ``gone``: ranges tracked at the previous collection of *this* tracker object
    that are no longer mapped (or no longer selected); after a re-attach the
    first collection knows of no previous ranges, and the image's own VMA list
    is what tells the dumper what disappeared.
    """

    method: str
    vmas: tuple[VmaDirty, ...]
    gone: tuple[Interval, ...] = ()
    #: Seconds the get-and-clear took (not counting reading /proc/PID/maps).
    elapsed: float = 0.0
    #: CLOCK_MONOTONIC at the end of the collection.
    timestamp: float = 0.0

    # (one generator over all the runs: 30,000 mostly clean VMAs must not cost two sums each)
    @property
    def written_pages(self) -> int:
        return sum(n for v in self.vmas for _, n in v.written)

    @property
    def hole_pages(self) -> int:
        return sum(n for v in self.vmas for _, n in v.holes)

    @property
    def dirty_pages(self) -> int:
        return self.written_pages + self.hole_pages

    @property
    def new_vmas(self) -> tuple[VmaDirty, ...]:
        return tuple(v for v in self.vmas if v.new)

    @property
    def tracked_pages(self) -> int:
        return sum(v.npages for v in self.vmas)

    def pages(self, *, holes: bool = True) -> Iterator[int]:
        """Every dirty page address (written, and holes unless ``holes=False``)."""
        for v in self.vmas:
            for s, n in (v.written + v.holes) if holes else v.written:
                yield from range(s, s + n * PAGE_SIZE, PAGE_SIZE)


@dataclass(frozen=True)
class TrackingState:
    """What a later ``ckpt`` process needs to take over tracking; the caller saves it.

    uffd-wp: the target's copy of the userfaultfd is parked at ``parked_fd`` and
    recognised by ``uffd_inode`` (unique per userfaultfd).  hash: the digests
    live in ``digests_path``.  ``start_time`` pins the pid to one process.
    The image inventory keeps (method, parked_fd, uffd_inode) as TrackingState.
    ``image_id``: the image whose get+clear the tracker served last — the
    only parent a delta from it can be right for (a parked userfaultfd is
    one clear-state shared by every image that recorded it).
    """

    method: str
    pid: int
    start_time: int
    parked_fd: int = -1
    uffd_inode: int = 0
    digests_path: str = ""
    include: tuple[Interval, ...] | None = None
    exclude: tuple[Interval, ...] = ()
    image_id: str = ""
    #: soft-dirty: the VMAs when the bits were last cleared (:func:`vma_key` of each).
    layout: tuple[VmaKey, ...] = ()

    @property
    def ranges(self) -> RangeSpec:
        return RangeSpec(self.include, self.exclude)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrackingState":
        d = json.loads(text)
        inc = d.get("include")
        d["include"] = None if inc is None else tuple(tuple(x) for x in inc)
        d["exclude"] = tuple(tuple(x) for x in d.get("exclude", ()))
        d["layout"] = tuple(tuple(x) for x in d.get("layout", ()))
        return cls(**d)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (tmp + rename, mode 0600): a crash never leaves half a state file, and the
        temporary file a killed run left beside it is removed here."""
        _sweep_tmp(os.path.dirname(os.fspath(path)) or ".")
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TrackingState":
        with open(path) as f:
            return cls.from_json(f.read())


_TMP = re.compile(r"^track-\d+\.json\.tmp(\d+)$")


def _sweep_tmp(directory: str) -> None:
    """Remove the half-written state files of ckpt runs that were killed while writing them (their pid gone)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = _TMP.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def state_dir() -> str:
    return os.environ.get("CKPT_STATE_DIR", STATE_DIR_DEFAULT)


def tracking_state_path(pid: int) -> str:
    """The state file of the tracker parked in ``pid`` (by ``ckpt track --start`` or a pre-dump)."""
    return os.path.join(state_dir(), f"track-{pid}.json")


def load_tracking_state(pid: int, start_time: int) -> TrackingState | None:
    """The state file of ``pid`` when it is readable and names this process (not an earlier one of that pid)."""
    try:
        st = TrackingState.load(tracking_state_path(pid))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return st if st.pid == pid and st.start_time == start_time else None


def forget_the_dead() -> None:
    """Remove the state files (and digests) and creation journals whose process no longer exists.

    Left by runs that were killed, or by targets that ended while tracked: nothing
    can use them, and every run would read them again.
    """
    d = state_dir()
    try:
        names = [n for n in os.listdir(d) if n.startswith(("track-", "creating-")) and n.endswith(".json")]
    except OSError:
        return
    for n in names:
        path = os.path.join(d, n)
        try:
            with open(path) as f:
                rec = json.loads(f.read())
            pid, start_time = int(rec["pid"]), int(rec["start_time"])
        except (OSError, ValueError, TypeError, KeyError):
            continue  # being written, or not ours
        try:
            if read_starttime(pid) == start_time:
                continue
        except TargetGone:
            pass
        for gone in (path, rec.get("digests_path") or ""):
            if gone and os.path.dirname(os.path.abspath(gone)) == os.path.abspath(d):
                try:
                    os.unlink(gone)
                except OSError:
                    pass


def tracking_states() -> list[TrackingState]:
    """Every readable state file: the trackers parked by this machine's ckpt runs (some may be stale)."""
    d = state_dir()
    try:
        names = sorted(n for n in os.listdir(d) if n.startswith("track-") and n.endswith(".json"))
    except OSError:
        return []
    out = []
    for n in names:
        try:
            out.append(TrackingState.load(os.path.join(d, n)))
        except (OSError, ValueError, TypeError, KeyError):
            continue  # half-written or foreign: not evidence of anything
    return out


@dataclass
class _Previous:
    """The ranges seen at the last collection, to report ``gone`` ones."""

    ranges: list[Interval] = field(default_factory=list)

    def gone(self, now: Sequence[Interval]) -> tuple[Interval, ...]:
        """The parts of the previous ranges outside ``now`` (both sorted, disjoint: one sweep)."""
        out = subtract_sorted(self.ranges, now)
        self.ranges = list(now)
        return tuple(out)


class Tracker(abc.ABC):
    """One back-end tracking the written pages of one process (``pid``).

    Life cycle: ``start(ranges)`` (or attach from a saved :class:`TrackingState`),
    then ``collect()`` as often as needed, then either ``stop()`` (tracking ends,
    the target is left as it was) or ``detach()`` (tracking stays alive in the
    target for the next ``ckpt`` process; save the returned state).
    Follow the clear-then-copy rule in this module's docstring.
    """

    method: str = ""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ranges = RangeSpec()
        self._previous = _Previous()
        #: Time the target spent frozen for this tracker (uffd-wp: the injections that park
        #: and close its userfaultfd; a get+clear never stops the target).
        self.frozen_seconds = 0.0
        #: What was found and mended on the way in (trackers killed runs left in the target).
        self.notes: list[str] = []

    @abc.abstractmethod
    def start(self, ranges: RangeSpec | None = None) -> None:
        """Begin tracking; every selected page counts as written until the first collect."""

    @abc.abstractmethod
    def collect(self) -> DirtySet:
        """Get and clear: the pages written since the previous collect (or start)."""

    def peek(self) -> DirtySet:
        """Get without clearing (not every back-end can)."""
        raise CkptError(f"the {self.method} tracker cannot report written pages without clearing them")

    @abc.abstractmethod
    def stop(self) -> None:
        """End tracking and remove every trace of it from the target."""

    @abc.abstractmethod
    def detach(self) -> TrackingState:
        """Leave tracking running in the target; the state lets a later process take over."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
