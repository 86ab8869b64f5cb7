"""Pre-dumps and delta chains (issue 4): copy memory while the target runs, then dump only what changed.

A chain is base → deltas.  Each image records in its inventory how tracking
of the process is kept alive (``ProcessRef.tracking``: method, parked fd,
userfaultfd inode; for ``hash`` the digests travel as ``digests-<pid>.img`` in
the image), so the next ``pre-dump``/``dump --prev-images-dir PARENT`` re-attaches
from the PARENT image, not from a side file.

The rules of DESIGN §2 ("Tracking lifecycle") that this module obeys:

* clear, then copy — ``collect()`` (get+clear) runs before any page is read;
* every VMA not registered before a scan is registered, and a new VMA is wholly
  dirty (done by the back-end, which asks the kernel which ones those are); VMAs
  nobody tracks (read-only, refused) are copied every time;
* a page is marked PARENT only when it is clean *and* the parent chain really
  holds it (:func:`ckpt.resources.memory.dump_pages_delta`); otherwise it is copied.

Address-range selection (``pre-dump --ranges/--exclude-ranges``): a pre-dump
copies and tracks only the selected ranges (:class:`RangeSpec`); memory
outside them is left out of its pagemap.  The selection is recorded with the
image's tracking state (inventory, ``TrackingState.include/exclude``) and in
the state file, so the next pre-dump of the chain keeps it.  The final ``dump`` re-attaches with
the same selection but dumps the whole layout: every page outside the tracked
ranges is dirty to :func:`_dirty_intervals`, so it is copied in full, whatever
the parent holds — the image is complete.  Correctness never rests on the
recorded selection: without it tracking covers the whole process, and a range
no tracker watched is copied in full.

When the parent's tracking cannot be trusted (another process behind the pid,
the parked fd closed or replaced, the target exec'd, no tracking recorded)
the delta becomes a full copy and a warning says why — never a silently wrong
delta.  A failed pre-dump stops tracking altogether (the get+clear it did
would make a later delta from the same parent miss writes), so the next one
from that parent is a full one, with the warning.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .control.seize import require_our_pid_namespace
from .errors import CkptError, TargetGone, Unsupported, UsageError
from .image import kinds
from .image.chain import open_chain
from .image.pb import mm_pb2
from .image.reader import Image
from .image.records import ImageKind, ProcessInfo, TrackingInfo
from .image.store import DEFAULT_COMPRESS_LEVEL, ImageWriter, PageWriter, fsync_wanted
from .kernel.arch_x86_64 import PAGE_SIZE, TASK_SIZE_MAX
from .kernel.mman import PROT_EXEC, PROT_READ, PROT_WRITE
from .kernel.vm import ProcMem
from .procfs.maps import SPECIAL_MAPPINGS, read_maps
from .procfs.snapshot import snapshot
from .procfs.stat import read_stat
from .procfs.task import list_tids, read_starttime
from .resources import memory, tree
from . import testpoint
from .track import DirtySet, Tracker, TrackingLost, TrackingState, open_tracker
from .track.base import (
    UNFINISHED, RangeSpec, format_ranges, load_tracking_state, merge_runs, subtract_intervals, tracking_state_path,
    tracking_states,
)
from .track.hash import HashTracker
from .track.soft_dirty import SoftDirtyTracker
from .track.uffd_wp import UffdWpTracker, _parked_inode, clean_leftovers, parked_userfaultfds

__all__ = ["PreDumpStats", "DeltaSession", "pre_dump", "begin_dump", "store_next", "store_latest",
           "resolve_image_dir", "parked_tracker_fds", "clean_tracking_leftovers", "Interval", "normalize_ranges",
           "format_ranges", "check_ranges"]

Interval = tuple[int, int]
#: Back-ends whose clear-state is one per process, shared by every image that recorded it (a parked
#: userfaultfd; the page tables' soft-dirty bits): a delta is right only from the last image that cleared it.
_ONE_CLEAR_STATE = ("uffd-wp", "soft-dirty")
_EVERYTHING: list[Interval] = [(0, TASK_SIZE_MAX)]


@dataclass(frozen=True)
class PreDumpStats:
    """One pre-dump: what was copied while the target ran, and how long each part took (seconds)."""

    pid: int
    image_dir: str
    parent: str | None
    full: bool               # every page copied (first pre-dump, or tracking lost)
    method: str
    dirty_pages: int         # reported written since the parent (full: every tracked page)
    pages_stored: int        # HERE
    pages_parent: int        # PARENT
    pages_zero: int
    pages_skipped: int       # unmapped while being read; the next delta copies them if they come back
    stored_bytes: int
    collect_seconds: float   # attach + get+clear (start: creating the tracker)
    copy_seconds: float
    total_seconds: float
    notes: tuple[str, ...] = field(default=())
    include: tuple[Interval, ...] | None = None  # the selected address ranges (None: the whole process)
    exclude: tuple[Interval, ...] = ()
    frozen_seconds: float = 0.0  # the target stopped: uffd-wp's injections when tracking starts; a delta: 0
    processes: int = 1  # of the tree (the counts are sums over them)


# --- numbered stores (--incremental) ----------------------------------------


def _numbered(store: str) -> list[int]:
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(store, n, kinds.INVENTORY.template)))


def store_latest(store: str | os.PathLike[str]) -> str | None:
    """The newest numbered image ``STORE/N`` (None when the store holds none)."""
    nums = _numbered(os.fspath(store))
    return os.path.join(os.fspath(store), str(nums[-1])) if nums else None


def store_next(store: str | os.PathLike[str]) -> tuple[str, str | None]:
    """(``STORE/N+1``, ``STORE/N`` or None): where the next checkpoint of a store goes, and its parent."""
    store = os.fspath(store)
    os.makedirs(store, mode=0o700, exist_ok=True)
    latest = store_latest(store)
    n = int(os.path.basename(latest)) + 1 if latest else 1
    return os.path.join(store, str(n)), latest


def resolve_image_dir(path: str | os.PathLike[str]) -> str:
    """An image directory, or a store's newest image when ``path`` is a store (``restore -D STORE``)."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, kinds.INVENTORY.template)):
        return path
    latest = store_latest(path)
    if latest is None:
        return path  # let the reader report what is wrong with it
    if Image.open(latest).kind is ImageKind.PRE_DUMP:
        raise UsageError(f"{path}: the newest checkpoint {latest} is a pre-dump (memory only)",
                         hint="finish the chain with `ckpt dump --incremental` (or --prev-images-dir) first")
    return latest


# --- address-range selection ----------------------------------------------------

def _merged(intervals: Sequence[Interval], option: str) -> tuple[Interval, ...]:
    """Sorted intervals with overlapping or touching ones joined; UsageError on a bad one."""
    out: list[list[int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in intervals):
        if s < 0 or s >= e or s % PAGE_SIZE or e % PAGE_SIZE:
            raise UsageError(f"bad address range {s:#x}-{e:#x} in {option}: start must be below end "
                             "and both page-aligned")
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def normalize_ranges(include: Sequence[Interval] | None, exclude: Sequence[Interval] | None = None) -> RangeSpec:
    """A :class:`RangeSpec` in one canonical form (sorted, merged), so two selections compare equal."""
    inc = None if include is None else _merged(include, "--ranges")
    if inc is not None and not inc:
        raise UsageError("--ranges names no address range")
    return RangeSpec(inc, _merged(exclude or (), "--exclude-ranges"))


def _narrowed(spec: RangeSpec) -> bool:
    return spec.include is not None or bool(spec.exclude)


def _recorded_ranges(image: Image, pid: int, start_time: int) -> RangeSpec:
    """The selection the tracking behind ``image`` covers: from the image, else the state file naming it.

    The state file covers images that carry no tracking of their own.
    Neither: the whole process — always safe, since a range no tracker
    watched is copied in full.
    """
    info = next((p for p in image.processes if p.pid == pid), None)
    if info is not None and info.tracking is not None and info.tracking.method:
        try:
            return normalize_ranges(info.tracking.include, info.tracking.exclude)
        except UsageError:
            return RangeSpec()  # unreadable: track everything (safe)
    st = load_tracking_state(pid, start_time)
    if st is not None and st.image_id == image.id:
        try:
            return normalize_ranges(st.include, st.exclude)
        except UsageError:
            pass
    return RangeSpec()


def _copyable(vmas: Sequence[mm_pb2.Vma]) -> list[mm_pb2.Vma]:
    """The VMAs whose pages a dump stores (not vDSO & co, not shared file mappings)."""
    return [v for v in vmas if v.kind not in memory.UNSTORED_KINDS]


def _clip_layout(vmas: Sequence[mm_pb2.Vma], spec: RangeSpec) -> list[mm_pb2.Vma]:
    """The parts of ``vmas`` inside the selection: what a pre-dump with ``spec`` copies."""
    if not _narrowed(spec):
        return list(vmas)
    out: list[mm_pb2.Vma] = []
    for v in vmas:
        if spec.include is None:
            pieces = [(v.start, v.end)]
        else:
            pieces = [(max(v.start, s), min(v.end, e)) for s, e in spec.include if s < v.end and e > v.start]
        for p in pieces:
            for s, e in subtract_intervals(p, spec.exclude):
                piece = mm_pb2.Vma()
                piece.CopyFrom(v)
                piece.start, piece.end = s, e
                out.append(piece)
    return out


def check_ranges(pid: int, include: Sequence[Interval] | None, exclude: Sequence[Interval] | None) -> RangeSpec:
    """The normalized selection; UsageError, before the target is touched, when it names no mapping
    of ``pid`` or leaves nothing to copy (only the target's maps are read)."""
    spec = normalize_ranges(include, exclude)
    vmas = _copyable(_vmas_now(pid))
    for option, ivs in (("--ranges", spec.include or ()), ("--exclude-ranges", spec.exclude)):
        for s, e in ivs:
            if not any(v.start < e and s < v.end for v in vmas):
                raise UsageError(f"{option} {s:x}-{e:x} matches no mapping of process {pid} with pages to copy "
                                 f"(see /proc/{pid}/maps)")
    if not _clip_layout(vmas, spec):
        raise UsageError(f"the address ranges {format_ranges(spec)} leave nothing of process {pid} to copy")
    return spec


# --- tracking carried by images -------------------------------------------------


def _digests_file(image_dir: str, pid: int) -> str:
    return os.path.join(image_dir, kinds.DIGESTS.file_name(pid))


def _state_from_image(image: Image, pid: int, start_time: int) -> tuple[TrackingState | None, str]:
    """The tracking state recorded for ``pid`` in ``image``, or (None, why it cannot be used)."""
    info = next((p for p in image.processes if p.pid == pid), None)
    if info is None:
        return None, f"the parent image {image.path} has no process {pid}"
    if info.start_time != start_time:
        return None, f"process {pid} is not the one in the parent image {image.path} (its pid was reused)"
    if info.tracking is None or not info.tracking.method:
        return None, f"the parent image {image.path} records no dirty tracking of process {pid}"
    t = info.tracking
    digests = _digests_file(image.path, pid) if t.method in ("hash", "soft-dirty") else ""  # soft-dirty: may lack it
    return TrackingState(t.method, pid, start_time, t.parked_fd, t.uffd_inode, digests_path=digests,
                         layout=t.layout), ""


def _moved_on(pid: int, start_time: int, parent: Image) -> str:
    """Why the parked userfaultfd no longer serves ``parent`` ("" if it does, or if nobody can tell).

    Its written-page bits were cleared by the last image that collected from it:
    a second pre-dump from an older parent (a branch) would get only the writes
    since that newer image and miss the ones before it.  The state file names
    that image; without a state file (it could not be saved) the parent is trusted.
    A run saves the state file naming no image yet (UNFINISHED) before its get+clear:
    if it never finished, its clear still counts.
    """
    st = load_tracking_state(pid, start_time)
    if st is None or not st.image_id or st.image_id == parent.id:
        return ""
    if st.image_id == UNFINISHED:
        return (f"a ckpt run that did not finish (killed?) collected the written pages of process {pid} after "
                f"the parent {parent.path}, so a delta from it would miss writes")
    return (f"the tracking of process {pid} has moved on to a later image ({st.image_id}) than the parent "
            f"{parent.path}, so a delta from it would miss writes")


def _in_parent(chain: Sequence[Image], pid: int) -> list[Interval]:
    """Address intervals of every page of ``pid`` the chain can give back.

    The newest image's pagemap alone says it: it lists every page the process
    had then, as HERE, ZERO, or PARENT — and in a chain that verifies, a PARENT
    range resolves further up.  Reading one pagemap instead of resolving the
    whole chain keeps a final delta's frozen time independent of chain depth;
    a broken chain still fails loudly at restore and in ``verify``.
    """
    pm = chain[-1].pagemap(pid)
    return [(s, s + n * pm.page_size) for s, n in merge_runs(zip(pm.vaddrs, pm.nr_pages))]


def _dirty_intervals(ds: DirtySet, vmas: Sequence[mm_pb2.Vma]) -> list[Interval]:
    """Written (and dropped) runs, plus every part of a VMA that no tracker watched: copy all of that.

    Linear in VMAs and runs (a bisect per VMA): 30,000 mappings must not cost 30,000² steps.
    """
    runs: list[Interval] = []
    for v in ds.vmas:
        if v.written or v.holes:
            runs.extend((s, s + n * PAGE_SIZE) for s, n in v.written + v.holes)
        if v.untracked:
            runs.append((v.start, v.end))
    tracked = memory.merge_intervals((v.start, v.end) for v in ds.vmas if not v.untracked)
    ends = [e for _, e in tracked]
    for vma in vmas:
        pos = vma.start
        k = bisect.bisect_right(ends, pos)  # the first tracked interval ending after pos
        while k < len(tracked) and tracked[k][0] < vma.end and pos < vma.end:
            s, e = tracked[k]
            if s > pos:
                runs.append((pos, s))
            pos = max(pos, e)
            k += 1
        if pos < vma.end:
            runs.append((pos, vma.end))
    return memory.merge_intervals(runs)


def _vmas_now(pid: int) -> list[mm_pb2.Vma]:
    """The current VMAs as the minimal records :func:`memory.dump_pages_delta` needs (kind, prot)."""
    K = mm_pb2.Vma.Kind
    out = []
    for v in read_maps(pid):
        if v.path in SPECIAL_MAPPINGS:
            kind = K.VDSO
        elif v.shared:
            kind = K.ANON_SHARED if (v.inode == 0 or (v.deleted and v.path == "/dev/zero")) else K.FILE_SHARED
        elif v.inode != 0 and v.path.startswith("/"):
            kind = K.FILE_PRIVATE
        else:
            kind = K.ANON_PRIVATE
        prot = (PROT_READ if v.read else 0) | (PROT_WRITE if v.write else 0) | (PROT_EXEC if v.exec else 0)
        out.append(mm_pb2.Vma(start=v.start, end=v.end, kind=kind, prot=prot, name=v.path))
    return out


def _layout_now(pid: int, mem: ProcMem) -> tuple[list[mm_pb2.Vma], mm_pb2.MmEntry | None]:
    """The layout as a full dump records it (Vma records and the mm record), read while the target runs.

    A pre-dump writes it (``mm-PID.img``) so a staged restore can map each
    round's layout before the final image arrives.  When the layout cannot be
    recorded — a backing restore does not support (the final dump names it),
    or mappings that keep vanishing while they are read — the pre-dump gets
    the minimal records :func:`_vmas_now` gives and no mm record: its pages
    are still right, only a staged restore cannot start from it.
    """
    for _attempt in range(3):
        try:
            with snapshot(pid) as snap:
                vmas = memory.dump_vmas(pid, snap)
                if any(a.end > b.start for a, b in zip(vmas, vmas[1:])):
                    continue  # smaps is read in pieces: a mapping that changed in between shows twice
                return vmas, memory.dump_mm(pid, snap, None, mem, vmas)
        except Unsupported:
            break
        except TargetGone:
            raise
        except (CkptError, OSError, ValueError):
            continue  # a mapping went away between smaps and its stat (the target runs): read again
    return _vmas_now(pid), None


def _write_digests(w: ImageWriter, tracker: HashTracker | SoftDirtyTracker) -> None:
    """The hash tracker's digests (soft-dirty's of its huge blocks) go into the image, so the next delta
    re-attaches from it."""
    w.write_records(kinds.DIGESTS.file_name(tracker.pid), kinds.DIGESTS, tracker.records())


def parked_tracker_fds(pid: int, tracker: Tracker | None = None) -> frozenset[int]:
    """Descriptors of ``pid`` that are ckpt's parked userfaultfd, each checked by inode: never dump them.

    Every one carrying ckpt's mark (:func:`~ckpt.track.uffd_wp.parked_userfaultfds`),
    the tracker in hand, and those the state files ``ckpt track --start`` /
    ``pre-dump`` left name (a plain ``dump`` of a tracked process must not save them either).
    A child forked by a tracked process inherits the parked fd (same number,
    same userfaultfd: its own memory is not tracked by it, fork without
    UFFD_FEATURE_EVENT_FORK drops the registrations), so every state file is
    a candidate, not only ``pid``'s own.
    """
    found: set[int] = set(parked_userfaultfds(pid))  # marked: killed runs' leftovers are closed before
    cands: list[tuple[int, int]] = []
    if isinstance(tracker, UffdWpTracker) and tracker.parked_fd >= 0:
        cands.append((tracker.parked_fd, tracker.inode))
    cands.extend((st.parked_fd, st.uffd_inode) for st in tracking_states() if st.method == "uffd-wp")
    for fd, inode in cands:
        if fd >= 0 and _parked_inode(pid, fd) == inode:
            found.add(fd)
    return frozenset(found)


def clean_tracking_leftovers(pid: int) -> list[str]:
    """Close the trackers killed ckpt runs left in ``pid`` and its descendants (before a dump freezes them);
    notes naming each (:func:`~ckpt.track.uffd_wp.clean_leftovers`)."""
    return [n for p in tree.descendants(pid, include_root=True) for n in clean_leftovers(p)]


def _forget_state_file(pid: int) -> None:
    try:
        os.unlink(tracking_state_path(pid))
    except OSError:
        pass


def _save_state_file(state: TrackingState) -> str | None:
    """So that ``ckpt track --stop -t PID`` can end tracking left by a pre-dump; returns a note on failure."""
    path = tracking_state_path(state.pid)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        state.save(path)
    except OSError as e:
        return f"could not save the tracking state file {path} ({e.strerror}); `ckpt track --stop` will need --fd"
    return None


@dataclass
class DeltaSession:
    """Tracking of one process taken over from a parent image (or started afresh) for one new image.

    ``delta``: pages are compared with the parent (else every page is copied
    and ``parent_dir`` is None: the new image stands alone).  ``notes`` hold
    the warnings (why a delta became a full copy).
    """

    pid: int
    start_time: int
    tracker: Tracker
    parent_dir: str | None
    chain: list[Image] | None
    delta: bool
    notes: list[str]
    collect_seconds: float = 0.0
    dirty_pages: int = 0
    image_id: str = ""  # of the image being written (recorded in the state file by keep())
    #: The address ranges tracked (and, for a pre-dump, copied); the tracker was opened with it.
    selection: RangeSpec = field(default_factory=RangeSpec)

    @property
    def method(self) -> str:
        return self.tracker.method

    def plan(self, vmas: "Sequence[mm_pb2.Vma] | Callable[[], Sequence[mm_pb2.Vma]]"
             ) -> tuple[Sequence[mm_pb2.Vma], list[Interval], list[Interval]]:
        """Get+clear now (the clear before the copy), then (vmas, dirty, in_parent) for ``dump_pages_delta``.

        ``vmas`` may be a function reading the layout: it is called *after* the
        clear, so a VMA born in between counts as untracked (copied in full).
        Every part of the layout outside the tracked ranges (outside the
        selection, refused by the kernel) is dirty: copied whatever the parent
        holds, since nobody saw whether it was written.
        """
        if not self.delta:
            layout = vmas() if callable(vmas) else vmas
            self.dirty_pages = sum((v.end - v.start) // PAGE_SIZE for v in layout)
            return layout, _EVERYTHING, []
        t0 = time.monotonic()
        ds = self.tracker.collect()
        self.collect_seconds += time.monotonic() - t0
        testpoint.point("collected")
        layout = vmas() if callable(vmas) else vmas
        self.dirty_pages = ds.dirty_pages
        assert self.chain is not None
        return layout, _dirty_intervals(ds, layout), _in_parent(self.chain, self.pid)

    def on_copied(self):  # noqa: ANN201 - the hash tracker's note_copied, or None
        """Hash: record the digest of what was really copied (closes the X → X' → X gap)."""
        return self.tracker.note_copied if isinstance(self.tracker, HashTracker) else None

    def tracking_info(self, w: ImageWriter) -> TrackingInfo:
        """What the image records so the next delta re-attaches; hash digests are written into ``w``."""
        self.image_id = w.image_id
        if isinstance(self.tracker, HashTracker):
            _write_digests(w, self.tracker)
            return TrackingInfo("hash", include=self.selection.include, exclude=self.selection.exclude)
        if isinstance(self.tracker, SoftDirtyTracker):  # the bits are in the target; the layout at the clear here
            _write_digests(w, self.tracker)
            return TrackingInfo("soft-dirty", include=self.selection.include, exclude=self.selection.exclude,
                                layout=self.tracker.state().layout)
        assert isinstance(self.tracker, UffdWpTracker)
        return TrackingInfo(self.tracker.method, self.tracker.parked_fd, self.tracker.inode,
                            self.selection.include, self.selection.exclude)

    def claim(self) -> None:
        """Save the state file naming no image yet (UNFINISHED) before this session's first get+clear.

        If this run dies after the clear, no parent matches that state any more, so the
        next delta from one becomes a full copy instead of missing the writes it cleared.
        """
        if not isinstance(self.tracker, (UffdWpTracker, SoftDirtyTracker)):
            return  # hash: its digests live in each image, no state shared between images
        note = _save_state_file(dataclasses.replace(self.tracker.state(), image_id=UNFINISHED))
        if note:
            _forget_state_file(self.pid)  # no older state may vouch for this tracker instead
            self.notes.append(note)

    def check_alive(self) -> None:
        """Before commit: the target is still the same process and (uffd) still holds the parked fd."""
        try:
            same = read_starttime(self.pid) == self.start_time
        except (TargetGone, OSError):
            same = False
        if not same:
            raise TargetGone(self.pid, f"process {self.pid} exited while its memory was copied; no image written")
        t = self.tracker
        if isinstance(t, UffdWpTracker) and _parked_inode(self.pid, t.parked_fd) != t.inode:
            raise TrackingLost(self.pid, "the target exec'd or closed the tracking fd while its memory was copied; "
                                         "no image written")

    def keep(self) -> list[str]:
        """Leave tracking parked in the target for the next ckpt run (after the commit)."""
        notes: list[str] = []
        if isinstance(self.tracker, HashTracker):
            self.tracker.stop()  # the digests are in the image now
            return notes
        try:
            state = dataclasses.replace(self.tracker.detach(), image_id=self.image_id)
        except TrackingLost as e:
            return [f"{e}; the next pre-dump will be a full one"]
        note = _save_state_file(state)
        return [note] if note else notes

    def end(self, target_alive: bool) -> None:
        """Stop tracking for good: unregister and close the parked fd (or only our copies if the target is gone)."""
        t = self.tracker
        if isinstance(t, UffdWpTracker) and not target_alive:
            t.abandon()
        else:
            t.stop()
        _forget_state_file(self.pid)


def _open_session(pid: int, parent: str | os.PathLike[str] | None, method: str | None,
                  selection: RangeSpec | None = None) -> DeltaSession:
    """Re-attach to the tracking recorded in ``parent``, or start tracking (full copy, with a warning if needed).

    ``selection``: the address ranges to track (normalized); None keeps those
    recorded for ``parent`` (the whole process without a parent).  A selection
    other than the parent's restarts the chain: a full copy, with a warning.
    Without a usable parent, a tracker already parked in the process (its state
    file) is taken over rather than a second one made.  The state file is
    saved before the first get+clear (:meth:`DeltaSession.claim`).
    """
    start_time = read_starttime(pid)
    notes: list[str] = []
    want = selection if selection is not None else RangeSpec()
    if parent is not None:
        parent = os.path.abspath(os.fspath(parent))
        chain = open_chain(parent)  # a broken chain is an error, not a reason for a silent full copy
        recorded = _recorded_ranges(chain[-1], pid, start_time)
        want = selection if selection is not None else recorded
        state, why = _state_from_image(chain[-1], pid, start_time)
        if state is not None:
            state = dataclasses.replace(state, include=want.include, exclude=want.exclude)
        if state is not None and method is not None and state.method != method:
            state, why = None, f"the parent was tracked with {state.method}, --track asks for {method}"
        restart = ""
        if state is not None and want != recorded:
            restart = (f"the address ranges {format_ranges(want)} differ from those of the parent {parent} "
                       f"({format_ranges(recorded)})")
        elif state is not None and state.method in _ONE_CLEAR_STATE:
            restart = _moved_on(pid, start_time, chain[-1])
        if state is not None:
            t0 = time.monotonic()
            try:
                tracker = open_tracker(pid, state=state)
            except TrackingLost as e:
                why = e.reason
            else:
                notes.extend(tracker.notes)
                if not restart:
                    sess = DeltaSession(pid, start_time, tracker, parent, chain, True, notes, selection=want)
                    sess.claim()
                    sess.collect_seconds = time.monotonic() - t0
                    return sess
                # The parked tracker is fine, only its bits are relative to another image (or to
                # other ranges): take it over (a second one would be left in the target) and
                # clear it over the selection before the full copy.
                try:
                    return _full_session(pid, start_time, tracker, notes, want, t0,
                                         f"{restart}: writing a full image instead of a delta")
                except TrackingLost as e:
                    why = e.reason
        notes.append(f"{why}: writing a full image instead of a delta")
    t0 = time.monotonic()
    adopted = _parked_tracker(pid, start_time, method, want, notes)
    if adopted is not None:
        try:
            return _full_session(pid, start_time, adopted, notes, want, t0)
        except TrackingLost:
            pass  # exec'd meanwhile: a new tracker below
    tracker = open_tracker(pid, method, ranges=want)
    notes.extend(tracker.notes)
    sess = DeltaSession(pid, start_time, tracker, None, None, False, notes, selection=want)
    sess.claim()  # after start(): a run killed before this is mended by the mark (clean_leftovers)
    sess.collect_seconds = time.monotonic() - t0
    return sess


def _full_session(pid: int, start_time: int, tracker: Tracker, notes: list[str], want: RangeSpec,
                  t0: float, note: str = "") -> DeltaSession:
    """A full copy with a tracker taken over: its clear-state starts again now, over ``want``
    (TrackingLost, the tracker ended, when it is gone meanwhile)."""
    sess = DeltaSession(pid, start_time, tracker, None, None, False, notes, selection=want)
    sess.claim()
    try:
        tracker.collect()
    except BaseException:
        sess.end(target_alive=os.path.exists(f"/proc/{pid}"))
        raise
    if note:
        notes.append(note)
    sess.collect_seconds = time.monotonic() - t0
    return sess


def _parked_tracker(pid: int, start_time: int, method: str | None, want: RangeSpec,
                    notes: list[str]) -> Tracker | None:
    """The uffd-wp tracker a state file says is parked in ``pid`` (``track --start``, an earlier chain), taken
    over when ``method`` allows; stopped when another method is asked for (it would be left behind)."""
    st = load_tracking_state(pid, start_time)
    if st is None or st.method != "uffd-wp":
        return None
    try:
        tracker = open_tracker(pid, state=dataclasses.replace(st, include=want.include, exclude=want.exclude))
    except TrackingLost:
        return None
    notes.extend(tracker.notes)
    if method in (None, st.method):
        return tracker
    tracker.stop()
    _forget_state_file(pid)
    notes.append(f"stopped the {st.method} tracking parked in process {pid} (fd {st.parked_fd}): "
                 f"--track asks for {method}")
    return None


def begin_dump(pid: int, parent: str | os.PathLike[str] | None, method: str | None) -> DeltaSession:
    """For the final ``dump``: take over (or start) tracking before the freeze; see :meth:`DeltaSession.plan`."""
    return _open_session(pid, parent, method)


def pre_dump(pid: int, image_dir: str | os.PathLike[str], *, parent: str | os.PathLike[str] | None = None,
             method: str | None = None, compress_level: int | None = DEFAULT_COMPRESS_LEVEL,
             ranges: Sequence[Interval] | None = None, exclude: Sequence[Interval] | None = None) -> PreDumpStats:
    """Copy the memory of ``pid`` into a PRE_DUMP image while it runs; leave tracking parked for the next one.

    Without ``parent`` (or when the parent's tracking is gone) every page is
    copied and tracking starts; with it, only pages written since the parent
    are copied and the rest are PARENT.  The image also records the layout
    (``mm-PID.img``, as a dump writes it, read after the clear) so that a
    staged restore can map it ahead of the final image; a layout a dump could
    not take leaves it out.  The target is stopped only for the
    tracker's short injections.  Raises TargetGone when the target exits, and
    TrackingLost when it execs, during the copy (no image is left).

    ``ranges``/``exclude`` select address ranges (default: the whole process):
    only their pages are copied and tracked, the rest of memory is left to
    the final dump, which copies it in full.  Leaving both out keeps the
    parent's selection; a different one gives a full copy of it, with a note.
    A range matching no mapping, or a selection leaving nothing to copy, is a
    UsageError before the target is touched.
    """
    require_our_pid_namespace(pid)
    pids = tree.descendants(pid, include_root=True)
    if len(pids) > 1 and (ranges is not None or exclude is not None):
        raise UsageError(f"--ranges/--exclude-ranges select addresses of one process, and process {pid} has "
                         f"descendants ({', '.join(map(str, pids[1:9]))}): not supported for a process tree")
    t0 = time.monotonic()
    image_dir = os.fspath(image_dir)
    selection = check_ranges(pid, ranges, exclude) if ranges is not None or exclude is not None else None
    sessions: dict[int, DeltaSession] = {}
    copied: dict[int, tuple[memory.DeltaStats, int]] = {}
    try:
        for p in pids:
            sessions[p] = _open_session(p, parent, method, selection if p == pid else None)
        delta_parent = next((sess.parent_dir for sess in sessions.values() if sess.delta), None)
        t_copy = time.monotonic()
        with ImageWriter(image_dir, kind=ImageKind.PRE_DUMP, parent=delta_parent, tracking=sessions[pid].method,
                         compress_level=compress_level, sync=fsync_wanted(ends_target=False)) as w:
            infos = []
            writers = {p: _pre_dump_one(p, sess, w) for p, sess in sessions.items()}
            # Closed once all are copied: each one's last frames are compressed while the next
            # process is copied (their borrowed chunk buffers come back as frames are written).
            copied.update((p, (ds, pw.close().stored_bytes)) for p, (ds, pw) in writers.items())
            t_done = time.monotonic()
            for p, sess in sessions.items():
                sess.check_alive()
                st = read_stat(p)
                infos.append(ProcessInfo(p, st.ppid, tuple(list_tids(p)), sess.start_time, sess.tracking_info(w),
                                         pgid=st.pgrp, sid=st.session))
            # The unreaped children too: a staged restore creates the tree from the first image.
            infos += [ProcessInfo(z.pid, z.ppid, (), z.start_time, None, pgid=z.pgid, sid=z.sid, zombie=True,
                                  wait_status=z.wait_status, comm=z.comm) for z in tree.zombies_of(pids)]
            w.commit(processes=infos)
            stored = sum(n for _, n in copied.values())
    except BaseException:
        for p, sess in sessions.items():
            try:
                sess.end(target_alive=os.path.exists(f"/proc/{p}"))
            except CkptError:
                pass
        raise
    notes: list[str] = []
    for p, sess in sessions.items():
        notes.extend(f"process {p}: {n}" if p != pid else n for n in sess.notes + sess.keep())
    root = sessions[pid]
    dss = [ds for ds, _ in copied.values()]
    return PreDumpStats(pid, os.path.abspath(image_dir), delta_parent, not any(s.delta for s in sessions.values()),
                        root.method, sum(s.dirty_pages for s in sessions.values()),
                        sum(d.pages_stored for d in dss), sum(d.pages_parent for d in dss),
                        sum(d.pages_zero for d in dss), sum(d.pages_skipped for d in dss), stored,
                        sum(s.collect_seconds for s in sessions.values()), t_done - t_copy, time.monotonic() - t0,
                        tuple(notes), root.selection.include, root.selection.exclude,
                        sum(s.tracker.frozen_seconds for s in sessions.values()), processes=len(pids))


def _pre_dump_one(pid: int, sess: DeltaSession, w: ImageWriter) -> tuple[memory.DeltaStats, PageWriter]:
    """One running process's pages (since its parent image, per its session) and layout into ``w``;
    (what was copied, its page writer: close it to finish its frames)."""
    with ProcMem(pid) as mem:
        seen: list[tuple[list[mm_pb2.Vma], mm_pb2.MmEntry | None]] = []

        def layout() -> list[mm_pb2.Vma]:
            seen.append(_layout_now(pid, mem))
            return _clip_layout(seen[-1][0], sess.selection)

        vmas, dirty, in_parent = sess.plan(layout)
        full, mm = seen[-1]
        if mm is not None:
            w.write_mm(pid, mm, full)
        pw = w.pages(pid)
        ds = memory.dump_pages_delta(pid, vmas, pw, mem, dirty=dirty,
                                     in_parent=in_parent, running=True, on_copied=sess.on_copied())
    return ds, pw
