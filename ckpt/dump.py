"""Dump orchestration: freeze, write every record and the pages, commit, then end or release the target.

``dump()`` is all-or-nothing for the target: on any failure — an error, the
target dying, a full disk, Ctrl-C — the ``freeze`` context puts every thread
back running exactly as before and the ImageWriter context removes the
temporary directory, so neither a half image nor a stopped target is left.
Only after the image is committed is the target killed (the default, like
CRIU); with ``leave_running`` it is released as soon as its pages are read,
and the image is finished (last frames compressed, fsync, rename) while it runs.

``restore()`` lives in :mod:`ckpt.restore`; it is re-exported here so the API
layer has one module to import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass, field

from .control.inject import Scratch, ask_all, find_syscall_insn
from .control.seize import FrozenProcess, alive, hold_stopped, kill_and_collect, require_our_pid_namespace
from .errors import TargetGone, UsageError, translate_oserror
from .image.pb import process_pb2
from .image.records import ImageKind, ProcessInfo, TrackingInfo
from .image.store import DEFAULT_COMPRESS_LEVEL, ImageWriter, fsync_wanted
from .kernel.arch_x86_64 import PAGE_SIZE
from .procfs.snapshot import snapshot
from .procfs.stat import Stat, read_stat
from .progress import ProgressEvent
from . import incremental, observed
from .resources import aio, blocked, creds, files, ghost, limits, memfd, memory, seccomp, signals, sockets, tcp
from .resources import cow, crosscheck, guards, jobstop, procattrs, threads, timens, timers, tree, tty, vmflags
from .resources.context import DumpContext
from .restore import RestoreStats, restore, wait_restored

__all__ = ["DumpStats", "PROCESS_DUMPERS", "dump", "restore", "wait_restored", "RestoreStats", "GONE_TIMEOUT"]

#: Seconds to wait for a killed target to vanish from /proc (its parent reaps it, not us).
GONE_TIMEOUT = 5.0


class _Probed(Exception):
    """dump(probe=True) has every record: unwinds the image (aborted) and the freeze (released)."""

    def __init__(self, threads: int, vmas: int, frozen: float) -> None:
        super().__init__("probe done")
        self.threads, self.vmas, self.frozen = threads, vmas, frozen


def dump_limits(ctx: DumpContext) -> None:
    """rlimits, umask, cwd/root, personality, oom_score_adj, prctl flags (session ids come with the entry)."""
    ctx.entry.MergeFrom(limits.dump(ctx.proc, ctx.snap, scratch=ctx.scratch))


def dump_signals(ctx: DumpContext) -> None:
    """Dispositions (the pending queues are read last: :func:`ckpt.resources.signals.dump_pending`)."""
    ctx.entry.MergeFrom(signals.dump(ctx.proc, ctx.snap, scratch=ctx.scratch))


def dump_creds(ctx: DumpContext) -> None:
    ctx.entry.MergeFrom(creds.dump(ctx.proc, ctx.snap))


def dump_attrs(ctx: DumpContext) -> None:
    """Audit loginuid, membarrier registrations, MDWE, per-thread prctl flags."""
    ctx.entry.MergeFrom(procattrs.dump(ctx.proc, ctx.scratch, tolerate=ctx.tolerate, notes=ctx.notes))


def dump_seccomp(ctx: DumpContext) -> None:
    """Each thread's seccomp mode and filters (read with ptrace; a user-notification filter is refused)."""
    ctx.entry.MergeFrom(seccomp.dump(ctx.proc, ctx.snap))
    crosscheck.check_dump(ctx.proc, ctx.entry)  # what the kernel also shows must agree (creds, flags)


def dump_timers(ctx: DumpContext) -> None:
    """Interval and POSIX timers: time left, interval, and how each was created (read only, -R leaves them be)."""
    ctx.entry.MergeFrom(timers.dump(ctx.proc, ctx.snap, scratch=ctx.scratch))


#: Process-wide resources, dumped in this order while frozen, with a scratch area
#: mapped; each fills its part of ``ctx.entry`` or writes its own files through
#: ``ctx.writer``.  Files are not among them: they are dumped once for the whole
#: tree (a descriptor inherited across fork is one open file), and first — they
#: are the most likely to be refused (a socket, a pipe to an outside process),
#: and a refusal should come before anything else is asked of the targets.
#: Memory and threads (with their per-thread pending signals and scheduling)
#: are dumped by the orchestrator.
PROCESS_DUMPERS: list[tuple[str, Callable[[DumpContext], None]]] = [
    ("limits", dump_limits),
    ("signals", dump_signals),
    ("creds", dump_creds),
    ("attrs", dump_attrs),
    ("seccomp", dump_seccomp),
    # Last: the time left is read as close as possible to the pending queues (read after the last
    # injection), so few expiries fall in between; those that do are counted (PosixTimer.queued_at_read).
    ("timers", dump_timers),
]


@dataclass(frozen=True)
class DumpStats:
    """What one dump saved and how long it took (seconds)."""

    pid: int
    image_dir: str
    threads: int
    vmas: int
    pages_stored: int
    pages_zero: int
    bytes_read: int
    stored_bytes: int
    frozen_seconds: float    # from the first thread stopped to the last one let go (or killed)
    memory_read_seconds: float  # reading pages and handing them to the writer (compression included)
    write_seconds: float     # records, commit (fsync + rename)
    total_seconds: float
    left_running: bool
    left_stopped: bool = False  # -s: SIGSTOPped and detached; ``kill -CONT`` resumes it
    notes: tuple[str, ...] = field(default=())
    processes: int = 1  # live processes of the tree (zombies not counted); the other counts are sums over them
    zombies: int = 0


def _wait_gone(pid: int, start_time: int, timeout: float = GONE_TIMEOUT) -> bool:
    """Wait until the killed target left /proc (or is a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = read_stat(pid)
        except TargetGone:
            return True
        if st.starttime != start_time:
            return True  # the pid names another process already
        if st.state in ("Z", "X"):
            return True  # dead; reaping it is its parent's business, not ours
        time.sleep(0.005)
    return False


def dump(
    pid: int,
    image_dir: str | os.PathLike[str],
    *,
    leave_running: bool = False,
    leave_stopped: bool = False,
    compress_level: int | None = DEFAULT_COMPRESS_LEVEL,
    progress: Callable[[ProgressEvent], None] | None = None,
    shell_job: bool = False,
    tcp_close: bool = False,
    ext_unix_close: bool = False,
    tcp_established: bool = False,
    deleted_max: int | None = None,
    tolerate: Collection[str] = (),
    parent: str | os.PathLike[str] | None = None,
    track_mem: bool = False,
    track_method: str | None = None,
    end_target: Callable[[str], bool] | None = None,
    probe: bool = False,
    hand_over_sockets: bool = False,
) -> DumpStats:
    """Checkpoint process ``pid`` into the new directory ``image_dir`` (a FULL image).

    The target is killed once the image is committed unless ``leave_running``
    or ``leave_stopped`` (CRIU's -s: left in a group stop, detached, for a
    later SIGCONT — e.g. to restore elsewhere while keeping the original).
    ``progress(event)`` gets a :class:`ProgressEvent` at "frozen", "records",
    "memory" (repeated with the bytes read so far), "committed" (a hook for
    UIs and for tests that inject failures).  Raises TargetGone,
    AccessDenied, Unsupported (naming the resource) or CkptError; on any of
    them, and on KeyboardInterrupt, the target runs on and no image is left.
    ``shell_job``: descriptors on a terminal are allowed (restored onto the
    restorer's terminal); without it they are refused.  ``tcp_close``: an
    established TCP connection is dumped as a connection to be restored
    closed, instead of refusing the dump (CRIU's ``--tcp-close``).
    ``ext_unix_close``: likewise a unix socket connected to a process outside
    the tree comes back as one whose peer closed (``--ext-unix-close``).
    ``tcp_established``: established TCP connections are locked (nftables)
    and saved with TCP_REPAIR, to come back alive (CRIU's ``--tcp-established``,
    :mod:`ckpt.resources.tcp`); if the targets run on, so do the connections.
    ``deleted_max``: bytes of data of a deleted-but-open or mapped file the image
    may hold (default :data:`ckpt.resources.ghost.DELETED_MAX`; holes are not
    stored); a file with more is refused, naming the fd or mapping and the size.
    ``tolerate``: the losses the user lets through (``--tolerate``, names of
    :data:`ckpt.tolerance.TABLE`); any other loss refuses the dump, naming it.
    ``end_target(image_dir)``: asked, once the image is committed and with the
    target still frozen, whether to end it (True) or let it run on (False) —
    a migration ends the source only once the destination runs the process.
    If it raises, the target runs on, the exception propagates and the image
    stays.  Not with ``leave_running`` / ``leave_stopped``.
    ``probe``: freeze and dump every record but no page, then let the target
    go and write no image: what a final dump's non-memory part costs (its
    frozen time) and whether every resource can be dumped — a migration asks
    before its first round instead of failing after its last.
    ``hand_over_sockets``: bound inet sockets are marked to be handed to the
    restore as they are (a migration within one network namespace,
    :mod:`ckpt.migrate.handover`) rather than bound again.
    """
    if leave_running and leave_stopped:
        raise UsageError("leave_running and leave_stopped exclude each other (-R / -s)")
    if probe and (leave_running or leave_stopped or end_target is not None or parent is not None or track_mem):
        raise UsageError("a probe dumps no memory and writes no image: no other mode goes with it")
    if end_target is not None and (leave_running or leave_stopped):
        raise UsageError("end_target decides the target's fate itself: not with leave_running / leave_stopped")
    report = progress or (lambda _event: None)

    def step(phase: str, done: int = 0) -> None:
        report(ProgressEvent(phase, done))

    require_our_pid_namespace(pid)
    notes: list[str] = []
    conns = tcp.Session(enabled=tcp_established, notes=notes)  # refuses here if connections cannot be locked
    t0 = time.monotonic()
    image_dir = os.fspath(image_dir)
    ftree: tree.FrozenTree | None = None
    # Delta against ``parent`` and/or tracking kept for later (--track-mem): ckpt.incremental does it.
    # (one session per process of the tree as it is now; a process born before the freeze gets a full copy)
    incs: dict[int, incremental.DeltaSession] = {}
    notes.extend(incremental.clean_tracking_leftovers(pid))  # trackers killed ckpt runs left in the tree
    if parent is not None or track_mem:
        try:
            for p in tree.descendants(pid, include_root=True):
                incs[p] = incremental.begin_dump(p, parent, track_method)
                notes.extend(f"process {p}: {n}" if p != pid else n for n in incs[p].notes)
        except BaseException:
            for sess in incs.values():
                sess.end(target_alive=True)
            raise
    delta_parent = next((sess.parent_dir for sess in incs.values() if sess.delta), None)
    try:
        with tree.freeze_tree(pid) as ftree, conns:  # conns is left first: connections back before any thaw
            t_frozen = time.monotonic()
            step("frozen")
            for proc in ftree.procs.values():
                notes.extend(proc.notes)  # e.g. an injection area a killed run had left, removed
            shares_files = tree.shared_tables(ftree) if len(ftree.procs) > 1 else set()
            with ExitStack() as snaps, ImageWriter(
                    image_dir, kind=ImageKind.INCREMENTAL if delta_parent else ImageKind.FULL,
                    parent=delta_parent, compress_level=compress_level,
                    sync=fsync_wanted(ends_target=not (leave_running or leave_stopped or end_target is not None))) as w:
                t_rec = time.monotonic()
                snap_of = {p: snaps.enter_context(snapshot(p, hidden=proc.own_areas())) for p, proc in ftree.procs.items()}
                skip_of = {p: incremental.parked_tracker_fds(p, incs[p].tracker if p in incs else None)
                           for p in ftree.procs}
                cap = files.DELETED_MAX if deleted_max is None else deleted_max
                fdump = files.dump_tree([(proc, snap_of[p], skip_of[p]) for p, proc in ftree.procs.items()],
                                policy=files.StdioPolicy(shell_job=shell_job), tcp_close=tcp_close,
                                ext_unix_close=ext_unix_close, tcp_session=conns,
                                deleted_max=cap, notes=notes, tolerate=frozenset(tolerate),
                                hand_over=hand_over_sockets)
                fdump.write(w)
                if any(e.HasField("ghost") for e in fdump.files):
                    w.require(ghost.FEATURE)
                if any(e.inet.handed_over for e in fdump.files):
                    w.require(sockets.HANDED_FEATURE)
                cttys = tty.controlling(fdump.files, {p: sn.stat for p, sn in snap_of.items()})
                vmas_of = {p: memory.dump_vmas(p, snap_of[p], cap) for p in ftree.procs}  # before any scratch area
                shmem = memory.share_anon_objects(vmas_of)
                if len(vmas_of) > 1 and not incs and end_target is None and cow.mark_tree(  # pages a child shares with its parent
                        {p: sn.stat.ppid for p, sn in snap_of.items()}, vmas_of):
                    w.require(cow.FEATURE)
                scratch_of, unmap_of = _map_scratches(ftree, snap_of, snaps)
                _ask_ahead(ftree, snap_of, scratch_of)
                stops = jobstop.survey(ftree.procs, {p: sn.stat.ppid for p, sn in snap_of.items()}, scratch_of)
                records = {p: _dump_records(proc, snap_of[p], vmas_of[p], w, scratch_of[p], unmap_of[p],
                                            shell_job=shell_job, tcp_close=tcp_close, deleted_max=deleted_max,
                                            skip_fds=skip_of[p], notes=notes, ctty=cttys.get(p), job_stop=stops.get(p),
                                            tolerate=frozenset(tolerate),
                                            files_of=(fdump.fds_of.get(p, ()), fdump.files))
                           for p, proc in ftree.procs.items()}
                # Where the tree's clocks stand (after its timers' time left was read: an absolute timer restored
                # in a namespace continuing these clocks expires no earlier than it would have); refused here if
                # its time namespaces cannot be restored.
                clocks = timens.dump(ftree.procs)
                step("records")
                t_mem = time.monotonic()
                if probe:
                    raise _Probed(sum(len(c) for c, _ in records.values()), sum(len(v) for _, v in records.values()),
                                  t_mem - t_frozen)  # the writer and the freeze undo all
                step("memory")
                pstats: list[memory.PageStats] = []
                stored_bytes = 0
                for owner, (p, view, parts) in shmem.items():  # shared between processes: stored once
                    with w.pages(owner) as pw:
                        pstats.append(memory.dump_shmem(p, view, pw, parts))
                    stored_bytes += pw.close().stored_bytes
                for owner, path in _objects(fdump, vmas_of).items():  # each memfd/SysV/ghost once, however reached
                    with w.pages(owner) as pw:
                        for offset, data in memfd.read_content(path):
                            pw.add(offset, data)
                    stored_bytes += pw.close().stored_bytes
                # Each process's writer stays open until all are read: its last frames are compressed
                # while the next process is read, instead of being waited for in turn (a process of
                # 1 MiB took ~1.5 ms to compress, before the next one began).  They borrow their
                # chunk buffers, which come back as frames are written: open side by side, they do
                # not hold each other up (see PageWriter).  (Reading each process right after its
                # records, to compress during the next one's injections, was slower: the compressing
                # threads then compete with the injections' ptrace round trips for the CPUs.)
                writers = [w.pages(p) for p in ftree.procs]  # files made before any frame is written
                # Pages shared since fork are read without copying them (ckpt.resources.cow) where the tree runs
                # on, or shares them within itself (its parent's copy stays one for every child read after it).
                keep_shared = leave_running or leave_stopped or len(ftree.procs) > 1
                for (p, proc), pw in zip(ftree.procs.items(), writers):
                    vmas = [v for v in records[p][1] if not memory.is_shmem_view(v)]
                    inc = incs.get(p)
                    if inc is not None and inc.delta:  # get+clear under the freeze, then the delta
                        _, dirty, in_parent = inc.plan(vmas)
                        pstats.append(memory.dump_pages_delta(p, vmas, pw, proc.mem, dirty=dirty,
                                                              in_parent=in_parent, on_copied=inc.on_copied(),
                                                              keep_shared=keep_shared))
                    else:
                        done = sum(ps.bytes_read for ps in pstats)
                        pstats.append(memory.dump_pages(p, vmas, pw, proc.mem,
                                                        on_bytes=(lambda n, d=done: step("memory", d + n))
                                                        if progress else None, keep_shared=keep_shared))
                for p, proc in ftree.procs.items():  # an AIO request that completed since its ring was read
                    aio.check_unchanged(p, proc.mem, records[p][1])
                keep = bool(incs) and track_mem and (leave_running or leave_stopped)
                tracking = {p: sess.tracking_info(w) for p, sess in incs.items() if p in ftree.procs} if keep else {}
                if leave_running:
                    # Every page has been read: the targets run on while the last frames are
                    # compressed and the image is synced (a failure from here still leaves no image).
                    conns.resume()
                    _release_all(ftree)
                    t_thawed = time.monotonic()
                stored_bytes += sum(pw.close().stored_bytes for pw in writers)  # the last frames: memory time too
                t_commit = time.monotonic()
                w.commit(processes=_inventory(ftree, {p: sn.stat for p, sn in snap_of.items()}, records, tracking,
                                              shares_files), clocks=clocks)
                t_committed = time.monotonic()
                step("committed")
            if not (leave_running or leave_stopped or end_target is not None):
                conns.persist()  # the targets are ended below: their locks outlive us from here, for the restore
            if end_target is not None and not end_target(os.path.abspath(image_dir)):
                leave_running = True  # the caller keeps the original: let it go, as -R would
                conns.resume()
                _release_all(ftree)
                t_thawed = time.monotonic()
            if leave_stopped:
                # Queued while every thread is still frozen, so the targets run no instruction
                # after the image: the first thread let go takes the SIGSTOP into a group stop.
                hold_stopped(list(ftree.procs))
            elif not leave_running:
                kill_and_collect(list(reversed(ftree.procs.values())))  # children first
                # Their sockets closed in repair mode; the lock stays for the restore (a migration's
                # destination has its own: the source's goes).
                notes.extend(conns.keep(unlock=end_target is not None))
            if not leave_running:
                t_thawed = time.monotonic()
    except _Probed as done:
        return DumpStats(pid=pid, image_dir="", threads=done.threads, vmas=done.vmas, pages_stored=0, pages_zero=0,
                         bytes_read=0, stored_bytes=0, frozen_seconds=done.frozen, memory_read_seconds=0.0,
                         write_seconds=0.0, total_seconds=time.monotonic() - t0, left_running=True,
                         left_stopped=False, notes=tuple(notes))
    except BaseException as exc:
        if ftree is not None:
            for proc in ftree.procs.values():
                proc.collect_if_dead()
        for p, sess in incs.items():  # its get+clear may have run: the parent's tracking is spent
            sess.end(target_alive=alive(p))
        if isinstance(exc, OSError):
            raise translate_oserror(exc, pid, "dumping") from exc
        raise
    for p, sess in incs.items():
        if keep and p in ftree.procs:
            notes.extend(sess.keep())
        else:
            sess.end(target_alive=(leave_running or leave_stopped) and p in ftree.procs)
    if not (leave_running or leave_stopped):
        for p, proc in ftree.procs.items():
            if not _wait_gone(p, proc.start_time):
                notes.append(f"process {p} was killed but its parent has not reaped it yet")
    t_end = time.monotonic()
    return DumpStats(
        pid=pid, image_dir=os.path.abspath(image_dir), threads=sum(len(c) for c, _ in records.values()),
        vmas=sum(len(v) for _, v in records.values()),
        pages_stored=sum(ps.pages_stored for ps in pstats), pages_zero=sum(ps.pages_zero for ps in pstats),
        bytes_read=sum(ps.bytes_read for ps in pstats),
        stored_bytes=stored_bytes, frozen_seconds=t_thawed - t_frozen,
        memory_read_seconds=t_commit - t_mem, write_seconds=(t_mem - t_rec) + (t_committed - t_commit),
        total_seconds=t_end - t0, left_running=leave_running,
        left_stopped=leave_stopped, notes=tuple(notes), processes=len(ftree.procs), zombies=len(ftree.zombies),
    )


def _map_scratches(ftree: tree.FrozenTree, snap_of: dict, stack: ExitStack
                   ) -> tuple[dict[int, Scratch], dict[int, Callable[[], None]]]:
    """A scratch page mapped in every process (after its VMAs were read); with how to unmap each.

    ``stack`` unmaps whatever is still mapped when it closes (a failure); each
    process's own is unmapped once its records are done, before its pending
    signals are read (see :func:`_dump_records`).
    """
    scratch_of: dict[int, Scratch] = {}
    unmap_of: dict[int, Callable[[], None]] = {}
    for p, proc in ftree.procs.items():
        proc.use_syscall_insn(find_syscall_insn(p, proc.mem, snap_of[p].vmas))  # from the maps read already
        own = ExitStack()
        stack.callback(own.close)
        scratch_of[p] = own.enter_context(proc.injector().scratch(PAGE_SIZE))
        unmap_of[p] = own.close
    return scratch_of, unmap_of


def _ask_ahead(ftree: tree.FrozenTree, snap_of: dict, scratch_of: dict[int, Scratch]) -> None:
    """Ask every thread of the tree at once what the resource modules will ask it (inject.ask_all).

    Each injected call is a ptrace round trip, mostly waiting for the other
    vCPU to wake up; asked of 16 processes side by side, those waits overlap.
    ITIMER_REAL is not asked ahead: it is read as late as it can be (see
    PROCESS_DUMPERS).
    """
    lanes = []
    for p, proc in ftree.procs.items():
        main = (*memory.QUERIES, *limits.QUERIES, *creds.QUERIES, *signals.queries(snap_of[p].status),
                *procattrs.QUERIES, *timers.QUERIES)
        main_tid = proc.main_thread.tid
        for tid, asked in threads.queries(proc).items():  # each thread's own securebits (creds.thread_creds)
            lanes.append((proc.injector(tid), scratch_of[p], (*main, *asked, *procattrs.THREAD_QUERIES)
                          if tid == main_tid else (*asked, *creds.QUERIES, *procattrs.THREAD_QUERIES)))
    ask_all(lanes)


def _dump_records(proc: FrozenProcess, snap, vmas: list, w: ImageWriter, scratch: Scratch,  # noqa: ANN001
                  unmap: Callable[[], None], *, shell_job: bool, tcp_close: bool, deleted_max: int | None,
                  skip_fds: frozenset[int], notes: list[str], ctty: process_pb2.Ctty | None = None,
                  files_of: tuple[tuple, tuple] = ((), ()),
                  job_stop: process_pb2.JobStop | None = None,
                  tolerate: frozenset[str] = frozenset()) -> tuple[list, list]:
    """One frozen process's records (process entry, threads, mm and ``vmas``) into ``w``; (thread cores, VMAs).

    ``ctty``: its controlling terminal, when that is a pty pair of the tree (:func:`ckpt.resources.tty.controlling`).
    ``files_of``: its fds and the tree's open files, which its account must agree with
    (:func:`ckpt.resources.sockets.account_agrees`).

    ``scratch``: mapped in it, and unmapped (``unmap``) before its pending signals are read.
    """
    pid = proc.pid
    stat = snap.stat
    entry = process_pb2.ProcessEntry(pid=pid, ppid=stat.ppid, pgid=stat.pgrp, sid=stat.session,
                                     comm=stat.comm, start_time=stat.starttime, exit_signal=stat.exit_signal)
    if ctty is not None:
        entry.ctty.CopyFrom(ctty)
    if job_stop is not None:  # a group stop (jobstop.survey)
        entry.job_stop.CopyFrom(job_stop)
    inj = proc.injector()
    try:
        mm = memory.dump_mm(pid, snap, inj, proc.mem, vmas)
        cores = threads.dump_threads(proc, scratch, snap)
        notes.extend(blocked.dump_notes(pid, cores))  # calls a restore cannot resume
        ctx = DumpContext(pid=pid, proc=proc, snap=snap, writer=w, entry=entry, scratch=scratch,
                          shell_job=shell_job, tcp_close=tcp_close, deleted_max=deleted_max, skip_fds=skip_fds,
                          tolerate=tolerate)
        for _name, fn in PROCESS_DUMPERS:
            fn(ctx)
        notes.extend(ctx.notes)
    finally:
        unmap()
    # After the scratch area is gone: no syscall is injected any more (see dump_pending).
    signals.dump_pending(proc, entry, cores)
    # Last, with everything read: the kernel's own account, which the restore compares its result with.
    entry.observed.CopyFrom(observed.observe(pid, [c.tid for c in cores], hidden=proc.own_areas(), skip_fds=skip_fds,
                                             threads={c.tid: observed.settled(c.sigmask) for c in cores}))
    sockets.account_agrees(pid, entry.observed, *files_of)  # nothing reached a socket since its record
    w.write_process(pid, entry)
    w.write_threads(pid, cores)
    w.write_mm(pid, mm, vmas)
    if (entry.HasField("cwd_ghost") or entry.HasField("root_ghost") or mm.HasField("exe_ghost")
            or any(memory.is_ghost_view(v) for v in vmas)):
        w.require(ghost.FEATURE)
    if any(aio.is_ring(v) for v in vmas):
        w.require(aio.FEATURE)
    if mm.def_flags:  # (no /proc file shows them: a reader that ignored them would lose them unseen)
        w.require(vmflags.FEATURE)
    if any(v.guards for v in vmas):
        w.require(guards.FEATURE)
    return cores, vmas


def _inventory(ftree: tree.FrozenTree, stats: dict[int, Stat], records: dict[int, tuple[list, list]],
               tracking: dict[int, TrackingInfo], shares_files: set[int]) -> list[ProcessInfo]:
    """The inventory's process list: the live ones in tree order (ids as their snapshots read them,
    frozen), then the zombies."""
    out = []
    for p, proc in ftree.procs.items():
        st = stats[p]
        out.append(ProcessInfo(p, st.ppid, tuple(c.tid for c in records[p][0]), proc.start_time,
                               tracking.get(p), pgid=st.pgrp, sid=st.session, shares_files=p in shares_files))
    out += [ProcessInfo(z.pid, z.ppid, (), z.start_time, None, pgid=z.pgid, sid=z.sid, zombie=True,
                        wait_status=z.wait_status, comm=z.comm) for z in ftree.zombies]
    return out


def _objects(fdump: files.FilesDump, vmas_of: dict[int, list]) -> dict[str, str]:
    """{page owner: a /proc path opening it} of every memfd and deleted file the tree holds (by fd) or maps,
    and every System V segment it maps (their bytes are stored once, not per process)."""
    by_id = {e.id: e for e in fdump.files}
    out: dict[str, str] = {}
    stored = set(fdump.contents)  # a memfd only in flight: stored by the files already
    for pid, fds in fdump.fds_of.items():
        for f in fds:
            e = by_id[f.file_id]
            if e.kind == e.MEMFD or e.ghost.owner:
                out.setdefault(e.content.owner, f"/proc/{pid}/fd/{f.fd}")
    for pid, vmas in vmas_of.items():
        for v in vmas:
            if memory.is_object_view(v):
                out.setdefault(v.content_owner, memory.map_files_path(pid, v))
    return {owner: path for owner, path in out.items() if owner not in stored}


def _release_all(ftree: tree.FrozenTree) -> None:
    for proc in ftree.procs.values():
        proc.release()
