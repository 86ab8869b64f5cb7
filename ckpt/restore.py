"""The restore controller: turn a stopped helper process into the image's process, same pid and tids.

Order (DESIGN §4, each step a lesson of the prototype):

1. wait until the pid is free (a killed process keeps it 1-2 s here), create the
   helper with ``clone3(set_tid=[pid])`` — made by a forked child of this
   process with CLONE_PARENT (ckpt stays the parent and can wait for it) or,
   ``detached``, by an intermediate that goes at the hand-over so the helper
   is reparented like a daemon (:func:`~ckpt.resources.tree.create`); in a
   tree, only the root's: each other helper is cloned from its parent's once
   that one is through step 4 — or through step 5's memory, when the child
   shares pages with it since fork, so that it inherits them copy-on-write
   (:mod:`ckpt.resources.cow`) (:class:`_Helpers`);
2. seize it (TRACECLONE | EXITKILL), unregister its rseq area (it lives in a
   TLS that is about to disappear);
3. map the trampoline (``syscall; int3``) and a scratch area at an address free
   in both layouts; from now on every syscall runs from there;
4. close_range; munmap everything below TASK_SIZE_MAX but the trampoline and the
   vdso/vvar pages; move those to the image's addresses;
5. memory: mmap every VMA, fill the pages; join the tree's time namespace if
   it needs one (:mod:`ckpt.resources.timens`: made by the root's helper as it
   gets here, while each helper has one thread); process-wide resources (the
   :data:`PROCESS_RESTORERS` hook), ``PR_SET_MM_MAP`` with the exe;
6. threads by clone3 with their old tids, then per-thread registrations;
7. munmap the trampoline from the relocated vDSO's own ``syscall``, set each
   thread's final frame/xstate/mask and PTRACE_DETACH it.

If anything fails, the helper (and every thread created) is killed and reaped
and :class:`~ckpt.errors.RestoreError` says why; if ckpt dies, every helper
dies with it (:class:`~ckpt.resources.tree.RootHelper`).  Only the hand-over
(7) lets them outlive it.

:func:`restore` runs these steps in one go.  :class:`StagedRestore` runs the
same pieces spread over a migration: steps 1-5's memory part on the first
pre-copy image (the helper stays frozen), the memory of each later image as
it arrives, and at the switch-over the final delta's memory plus 5-7.  The
pieces are shared: :func:`_prepare` (2-4), :func:`_map_and_fill` (5, memory),
:func:`_finish` (5 after memory, 6, 7).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace

from . import observed, testpoint
from .control.inject import Injector, Scratch
from .control.seize import FrozenProcess, freeze, seize_options
from .errors import ChainError, CkptError, ImageError, RestoreError, UsageError
from .image import kinds
from .image.chain import resolve_pages
from .image.pb import files_pb2, mm_pb2, process_pb2
from .image.reader import Image
from .image.records import ImageKind, Pagemap, PageSource, PageState
from .image.verify import validated_chain
from .kernel import ptrace
from .kernel.arch_x86_64 import INT3, NR, PAGE_SIZE, SYSCALL_INSN, TASK_SIZE_MAX
from .kernel.mman import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE
from .kernel.prctl import PR_SET_PDEATHSIG
from .kernel.task_abi import RSEQ_FLAG_UNREGISTER
from .kernel.vm import ProcMem
from .procfs.maps import read_maps
from .procfs.stat import read_stat
from .procfs.timens import read_boot_id
from .progress import ProgressEvent
from .resources import cpu as cpu_features
from .resources import creds, fileid, files, ghost, host, limits, locks, memory, signals, threads, timens, timers, tree
from .resources import aio, cow, hugetlb, jobstop, procattrs, seccomp, shmfile, tcp, tty, vdso
from .resources.context import RestoreContext

__all__ = ["RestoreStats", "PROCESS_RESTORERS", "THREADS", "restore", "wait_restored", "wait_pid_free", "PID_FREE_TIMEOUT",
           "StagedRestore", "StageStats", "StagingMismatch"]

log = logging.getLogger(__name__)
#: Seconds to wait for a just-killed process to release its pid (its parent reaps about once a second).
PID_FREE_TIMEOUT = 5.0
_SCRATCH_PAGES = 4


def restore_files(ctx: RestoreContext) -> None:
    """Every fd at its number, opened by the helper itself while it still has the restorer's credentials.

    A process sharing its parent's descriptor table (CLONE_FILES) has it restored already, by the parent.
    """
    if ctx.files_shared:
        return
    policy = files.StdioPolicy(shell_job=ctx.shell_job, inherit=dict(ctx.inherit_fds),
                               allow_changed=ctx.allow_changed_files, handed=dict(ctx.handed_sockets),
                               same_boot=fileid.same_boot(ctx.image.inventory.boot_id))
    ctx.notes.extend(files.restore(ctx.inj, ctx.image.fds(ctx.pid), ctx.image.file_entries(),
                                   content=files.content_from_image(ctx.image), policy=policy, scratch=ctx.scratch,
                                   shared=ctx.shared_files, memfds=ctx.memfds, ptys=ctx.ptys,
                                   ghosts=ctx.ghosts))


def restore_locks(ctx: RestoreContext) -> None:
    """File locks, each in the process that owns it (POSIX) or once per open file (OFD, flock, lease).

    After the threads exist: every step before may open and close a file in the process (its cwd, its
    executable for PR_SET_MM_MAP), and closing any descriptor of a file drops the process's POSIX locks on it.
    """
    locks.restore(ctx.inj, ctx.image.fds(ctx.pid), scratch=ctx.scratch)


def restore_sigactions(ctx: RestoreContext) -> None:
    """The image's dispositions replace the helper's (its handlers are unmapped by now)."""
    signals.restore_sigactions(ctx.inj, ctx.entry.sigactions, scratch=ctx.scratch)


def restore_limits(ctx: RestoreContext) -> None:
    """cwd, root, umask, comm, personality, prctl flags, rlimits (after files and memory), session."""
    ctx.notes.extend(limits.restore(ctx.inj, ctx.entry, scratch=ctx.scratch, lower_limits=ctx.lowered_limits,
                                    ghosts=ctx.ghosts))


def restore_creds(ctx: RestoreContext) -> None:
    """Credentials are per thread: each thread drops to the image's, leader last."""
    for tid in sorted(ctx.injectors, key=lambda t: t == ctx.pid):
        creds.restore(ctx.injectors[tid], ctx.entry, scratch=ctx.scratch)


def restore_loginuid(ctx: RestoreContext) -> None:
    """The audit loginuid, by the process itself before its threads exist (they inherit it)."""
    if ctx.entry.HasField("attrs"):
        procattrs.restore_loginuid(ctx.inj, ctx.entry, scratch=ctx.scratch)


def restore_attrs(ctx: RestoreContext) -> None:
    """membarrier registrations, MDWE, per-thread prctl flags (as the restorer: before creds)."""
    procattrs.restore(ctx.injectors, ctx.entry, scratch=ctx.scratch)


def restore_seccomp_early(ctx: RestoreContext) -> None:
    """The filters of a process whose own credentials could not install them (no no_new_privs, no
    CAP_SYS_ADMIN): before those are set (the calls after pass by them, PTRACE_O_SUSPEND_SECCOMP)."""
    if seccomp.early(ctx.entry):
        seccomp.restore(ctx.inj, ctx.injectors, ctx.scratch, ctx.entry, strict=False)


def restore_seccomp(ctx: RestoreContext) -> None:
    """Each thread's filters and strict mode, after everything else the restore does in it."""
    seccomp.restore(ctx.inj, ctx.injectors, ctx.scratch, ctx.entry, filters=not seccomp.early(ctx.entry))


def restore_timers(ctx: RestoreContext) -> None:
    """Interval and POSIX timers (same ids, SIGEV_THREAD_ID to the same tids), armed with the time left at dump."""
    timers.restore(ctx.inj, ctx.entry, ctx.cores, scratch=ctx.scratch)


def restore_pending(ctx: RestoreContext) -> None:
    """Queued signals, while every thread blocks them all: per thread first, then the shared queue."""
    for core in ctx.cores:
        threads.restore_pending(ctx.injectors[core.tid], ctx.scratch, core)
    signals.restore_pending(ctx.inj, ctx.entry.shared_pending, scratch=ctx.scratch)


#: Marks where in :data:`PROCESS_RESTORERS` the orchestrator sets the mm fields
#: (PR_SET_MM_MAP) and creates the threads with their per-thread state
#: (registrations, scheduling, blocked mask); after it, ``ctx.injectors`` has every thread.
THREADS = "threads"

#: Process-wide resources in restore order, after memory is filled (DESIGN §4).
#: Files before credentials (they are opened with the restorer's rights, and the
#: pipes' bytes written from outside); sigactions before pending signals
#: (SIG_IGN discards pending ones); limits after files and memory (a lowered
#: RLIMIT_NOFILE/AS would stop them); credentials after the threads exist
#: (clone3 with set_tid needs CAP_SYS_ADMIN, and each thread has its own);
#: file locks once no step closes a file in the process any more, and as the
#: restorer (a lease needs the file's owner or CAP_LEASE); pending signals last, once every thread blocks all signals (its own mask is set
#: as it is let go, so no injected syscall dequeues one).
PROCESS_RESTORERS: list[tuple[str, Callable[[RestoreContext], None] | str]] = [
    ("files", restore_files),
    ("sigactions", restore_sigactions),
    ("limits", restore_limits),
    ("audit loginuid", restore_loginuid),
    ("mm and threads", THREADS),
    ("locks", restore_locks),
    # Timers once the threads exist (SIGEV_THREAD_ID names a tid), as the restorer (CLOCK_*_ALARM needs
    # CAP_WAKE_ALARM), every thread blocking every signal (an early expiry only queues its signal), and
    # before the pending signals: those of expiries before the dump are queued there, once.
    ("timers", restore_timers),
    ("attrs", restore_attrs),
    ("seccomp before credentials", restore_seccomp_early),
    ("creds", restore_creds),
    ("pending signals", restore_pending),
    # Last (ckpt/resources/seccomp.py): strict mode would take no more calls but those ckpt's own trace
    # lets by (PTRACE_O_SUSPEND_SECCOMP, until each thread is let go).
    ("seccomp", restore_seccomp),
]


@dataclass(frozen=True)
class RestoreStats:
    """What a restore did and how long each part took (seconds)."""

    pid: int
    tids: tuple[int, ...]
    vmas: int
    pages_written: int
    bytes_written: int
    pid_wait_seconds: float
    memory_seconds: float
    total_seconds: float
    detached: bool
    notes: tuple[str, ...] = field(default=())
    #: A staged restore: pages written by the stages before the final one (``pages_written`` is its own).
    staged_pages: int = 0
    #: Every process of the restored tree (the zombies too), parents first; ``pid`` is the root.
    processes: tuple[int, ...] = ()
    #: The self-check's time (:mod:`ckpt.observed`; 0 with ``check=False``).
    check_seconds: float = 0.0


def wait_pid_free(pid: int, timeout: float = PID_FREE_TIMEOUT) -> float:
    """Wait until ``/proc/PID`` is gone; RestoreError naming the holder if a live process keeps it."""
    t0 = time.monotonic()
    while os.path.exists(f"/proc/{pid}"):
        try:
            st = read_stat(pid)
        except (CkptError, OSError, ValueError):
            continue
        if st.state == "Z" and st.ppid == os.getpid():
            _reap_zombie(pid)  # ours: a helper of an earlier attempt, or an orphan reparented to us (we are init)
            continue
        if st.state not in ("Z", "X") or time.monotonic() - t0 > timeout:
            raise RestoreError(f"pid {pid} is taken by a running process ({st.comm}, state {st.state})"
                               if st.state not in ("Z", "X")
                               else f"pid {pid} is still held by an unreaped zombie ({st.comm}) after {timeout:.0f}s",
                               hint="stop that process, or restore into a new pid namespace (not implemented yet)")
        time.sleep(0.01)
    return time.monotonic() - t0


def _reap_zombie(pid: int) -> None:
    try:
        ptrace.waitpid(pid, os.WNOHANG)
    except OSError as exc:
        if exc.errno != errno.ECHILD:
            raise
        # reaped meanwhile (by the thread that made it)


def _kill_helper(proc: FrozenProcess) -> None:
    """SIGKILL a half-built process and collect every thread of it we trace.

    Its threads are also taken from /proc: one cloned by an injected clone3 is traced from birth
    (PTRACE_O_TRACECLONE) before the restore records it, and a leader is not reported while a traced
    zombie thread of its group is left uncollected — waiting for it would never end (seen: a restore
    interrupted between a thread's clone3 and its first stop).
    """
    tids = set(proc.threads)
    try:
        tids.update(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
    except OSError:
        pass
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for tid in sorted(tids, key=lambda t: t == proc.pid):
        # non-leaders first: a traced leader is not reported while traced zombie threads exist
        known = proc.threads.get(tid)
        if known is not None and known.gone:
            continue
        try:
            while True:
                st = ptrace.waitpid(tid)
                if st is None or st.gone:
                    break
        except ChildProcessError:
            pass
    proc.released = True
    if proc._mem is not None:
        proc._mem.close()


def _restore_error(exc: BaseException, pid: int) -> BaseException:
    """What a failed restore raises: a RestoreError for ckpt's and the kernel's errors, anything else as is.

    A corrupt image found on the way (a page chunk whose checksum fails) stays
    what it is — bad input, exit 2, as when ``verify`` finds it — with the pid named.
    """
    if isinstance(exc, ImageError):
        err: CkptError = type(exc)(exc.path, f"{exc.problem} (restore of {pid})", hint=exc.hint)
    elif isinstance(exc, CkptError) and not isinstance(exc, RestoreError):
        err = RestoreError(f"restore of {pid} failed: {exc}", hint=exc.hint)
    elif isinstance(exc, OSError):
        err = RestoreError(f"restore of {pid} failed: {exc}")
    else:
        return exc
    err.__cause__ = exc
    return err


def _open_chain(image_dir: str | os.PathLike[str], *, pre_dump: bool = False) -> list[Image]:
    """The chain ending at ``image_dir``; UsageError for a pre-dump unless ``pre_dump`` (a staged restore's stage)."""
    chain = validated_chain(image_dir)  # every check of `ckpt verify` but page data, before anything is created
    image = chain[-1]
    if image.kind is ImageKind.PRE_DUMP and not pre_dump:
        raise UsageError(f"{image.path}: is a pre-dump (memory only)",
                         hint="finish the chain with a dump (`ckpt dump --prev-images-dir`) and restore that")
    return chain


def _process_records(image: Image, pid: int) -> tuple[list, process_pb2.ProcessEntry]:
    """(thread cores, process entry) of a restorable image; the leader comes first."""
    cores = image.threads(pid)
    if not cores or cores[0].tid != pid:
        raise RestoreError(f"{image.path}: the thread list does not start with the leader {pid}")
    return cores, image.process(pid)


def restore(image_dir: str | os.PathLike[str], *, detached: bool = False, pidfile: str | os.PathLike[str] | None = None,
            shell_job: bool = False, inherit_fds: Mapping[int, int] | None = None,
            progress: Callable[[ProgressEvent], None] | None = None,
            allow_changed_files: bool = False, cpu_cap: Iterable[str] | None = None,
            before_hand_over: Callable[[], None] | None = None, check: bool = True,
            allow_lower_limits: bool = False, handed_sockets: Mapping[int, int] | None = None) -> RestoreStats:
    """Recreate the process of the image at ``image_dir`` with its pid and tids; it runs on return.

    Not ``detached``: the process is a child of the caller, who should
    :func:`wait_restored` for it.  ``detached``: it is reparented to init (or
    the nearest subreaper) like a daemon.  ``pidfile`` receives the pid.
    ``shell_job``: terminal descriptors are re-attached to the caller's terminal.
    ``inherit_fds`` maps an image fd whose pipe peer was outside the image (a
    stdio pipe to the parent) to a descriptor of the caller on that pipe —
    either end: it is reopened through /proc with the image's access mode.
    ``progress`` gets :class:`ProgressEvent`s ("memory" with bytes written, "done").
    ``allow_changed_files``: reopen an open file even if its size, mtime or
    build-id changed since the dump (a note says which); mapped files and the
    executable are still checked (their unsaved pages come from the file): only
    one whose size and build-id are the image's, with another mtime, is taken.
    ``cpu_cap``: the CPU checks to make (:func:`ckpt.resources.cpu.parse_cpu_cap`; None: the default).
    ``before_hand_over()``: called once every process is built, all still frozen and dying with us; if it
    raises, they are killed and the restore fails with it (a migration's commit, ckpt.migrate.dest).
    ``allow_lower_limits``: a hard rlimit that cannot be raised here (no CAP_SYS_RESOURCE) is lowered, with a
    note, instead of failing the restore.
    ``check``: compare the kernel's account of each restored process with the dump's (:mod:`ckpt.observed`)
    before any of them runs; a difference fails the restore (the processes are killed, the pids free).
    ``handed_sockets``: file id → our descriptor of each socket the image marks as handed over (a
    migration within one network namespace, :mod:`ckpt.migrate.handover`), installed as it is.
    """
    t_start = time.monotonic()
    chain = _open_chain(image_dir)
    image = chain[-1]
    cpu_features.check_image(image.inventory, cpu_cap)  # before any process exists
    clocks = timens.TimeNamespace(timens.plan(image.inventory))
    clocks.check()
    infos = image.processes
    root = tree.plan(infos)
    live = [_Member.load(image, p.pid, p.shares_files) for p in root.walk() if not p.zombie]
    host.check_areas(image.inventory, ((m.mm, m.vmas) for m in live))
    notes: list[str] = shmfile.recreate_missing(image, (v for m in live for v in m.vmas))  # (a migration's)
    for m in live:
        notes.extend(memory.check_files(m.mm, m.vmas, allow_changed=allow_changed_files))
    notes = list(dict.fromkeys(notes))  # a library every process maps: one note
    waited = sum(wait_pid_free(p.pid) for p in root.walk())

    members = {m.pid: m for m in live}
    connections: list[files_pb2.FileEntry] = []
    ptys = tty.PtyPairs(image.file_entries())  # controlling terminals are taken as the helpers are made
    early: dict[int, tuple[int, memory.PageStats, float]] = {}  # filled before their children were cloned

    def fill_first(ws: _Workspace) -> None:
        early[ws.pid] = _map_and_fill(ws, chain, members[ws.pid].vmas, progress, shmem, filler,
                                      opts.allow_changed_files)

    helpers = _Helpers(root, {m.pid: (m.mm, m.vmas) for m in live}, detached=detached,
                       on_ready=lambda ws: ptys.take_ctty(ws.inj, members[ws.pid].entry), fill_first=fill_first)
    opts = _FinishOptions(shell_job, dict(inherit_fds or {}), allow_changed_files, allow_lower_limits,
                          dict(handed_sockets or {}))
    shared = (files.SharedFiles({m.pid: image.fds(m.pid) for m in live}, image.file_entries())
              if len(live) > 1 else None)
    shmem = memory.ShmemObjects()
    _object_contents(shmem, image)
    nvmas, mem_s = 0, 0.0
    filled_pages = filled_bytes = 0
    filler = memory.PageFiller()  # one set of fill threads for the tree, not one per process
    try:
        for ws in helpers.build():  # parents first; each is built in turn and stays frozen
            m = members[ws.pid]
            m.ws = ws
            threads.check_xstate(m.pid, m.cores)
            n, filled, secs = early.pop(m.pid, None) or _map_and_fill(m.ws, chain, m.vmas, progress, shmem, filler,
                                                                       opts.allow_changed_files)
            nvmas, mem_s = nvmas + n, mem_s + secs
            filled_pages, filled_bytes = filled_pages + filled.pages_stored, filled_bytes + filled.bytes_read
            testpoint.point("restore-memory-filled")
            notes.extend(_finish(m.ws, chain, m.mm, m.vmas, m.cores, m.entry, opts, shared=shared,
                                 memfds=shmem.memfds, ghosts=shmem.ghosts, clocks=clocks, ptys=ptys))
            testpoint.point("restore-threads-created")
        shmem.memfds.add_seals()  # once every process has its mappings
        shmem.sysv.finish()
        shmem.ghosts.finish()  # their times, once every process has its mappings (mmap touches the atime)
        notes.extend(ptys.finish({m.pid: (m.ws.inj, m.ws.scratch, m.entry) for m in live if m.ws is not None}))
        t_check = time.monotonic()
        # Every socket is made: their connections' locks go once the processes run, or if the restore fails
        # from here on (killing the helpers closes the sockets, which ends those connections).
        connections = _file_entries(image, [m.pid for m in live])
        if check:
            notes.extend(_self_check([(m.ws, m.entry, m.cores) for m in live], root.pid,
                                     {p.pid for p in root.walk()}, image))
        check_s = time.monotonic() - t_check
        testpoint.point("restore-handing-over")
        if before_hand_over is not None:
            before_hand_over()
        helpers.hand_over(live[0].ws, live[0].entry)
        notes.extend(_let_go([(m.ws, m.vmas, m.cores, m.entry) for m in live]))
        notes.extend(tcp.unlock_restored(connections))
    except BaseException as exc:
        helpers.kill()
        if connections:
            tcp.unlock_restored(connections)
        shmem.sysv.abort()
        raise _restore_error(exc, root.pid)
    finally:
        filler.close()
        if shared is not None:
            shared.close()
        shmem.memfds.close()
        shmem.ghosts.close()
        ptys.close()
    _write_pidfile(pidfile, root.pid)
    return RestoreStats(pid=root.pid, tids=tuple(c.tid for c in live[0].cores), vmas=nvmas,
                        pages_written=filled_pages, bytes_written=filled_bytes, pid_wait_seconds=waited,
                        memory_seconds=mem_s, total_seconds=time.monotonic() - t_start, detached=detached,
                        notes=tuple(notes), processes=tuple(p.pid for p in root.walk()), check_seconds=check_s)


@dataclass
class _Member:
    """One live process of a tree being restored: its records, then its helper as it is built."""

    pid: int
    mm: mm_pb2.MmEntry
    vmas: list[mm_pb2.Vma]
    cores: list
    entry: process_pb2.ProcessEntry
    shares_files: bool = False  # its parent's descriptor table (CLONE_FILES): restored by the parent
    ws: "_Workspace | None" = None  # its helper, once built

    @classmethod
    def load(cls, image: Image, pid: int, shares_files: bool = False) -> "_Member":
        mm, vmas = image.mm(pid)
        cores, entry = _process_records(image, pid)
        return cls(pid, mm, list(vmas), list(cores), entry, shares_files)


def _object_contents(objects: memory.ShmemObjects, image: Image) -> None:
    """Tell ``objects`` how to fill a memfd, a SysV segment or a deleted file it creates (the image's pages of
    its owner), and which seals each memfd had."""
    owners = set(image.owners())

    def fill_fd(owner: str, fd: int) -> None:
        if owner in owners:
            hugetlb.write_object(fd, image.iter_pages(owner))  # (hugetlbfs has no write(): through a mapping)

    def fill_memory(owner: str, addr: int, size: int) -> None:
        if owner in owners:
            for offset, data in image.iter_pages(owner):
                n = min(len(data), size - offset)
                if n > 0:
                    ctypes.memmove(addr + offset, (ctypes.c_char * n).from_buffer_copy(data[:n]), n)

    objects.memfds.fill = fill_fd
    objects.ghosts.fill = ghost.fill_from_image(image)
    objects.ghosts.creators = ghost.creators(image.file_entries())
    objects.memfds.learn(image.file_entries())
    objects.sysv.fill = fill_memory


def _write_pidfile(pidfile: str | os.PathLike[str] | None, pid: int) -> None:
    if pidfile is not None:
        with open(pidfile, "w") as f:
            f.write(f"{pid}\n")


class _Helpers:
    """A tree's helpers, built one by one, parents first (:meth:`build`); :meth:`kill` ends them all.

    Only the root's helper is a copy of this process (:func:`tree.create`):
    it is seized and emptied (:func:`_prepare`), then clones the helpers of
    its children (:func:`tree.clone_helper`, an injected clone3), which start
    out as empty as it is — no copy of the restorer to fork and unmap again
    (measured: ~2.5 ms a process).  Each one clones its own children in turn
    before its memory is mapped, so no helper inherits anything of another
    process's memory — except a parent whose children share pages with it
    (the image's ``Vma.shared_with_parent``): ``fill_first`` maps and fills it
    before it clones them, and each keeps only the VMAs it shares
    (:mod:`ckpt.resources.cow`).  A zombie's helper ends at once
    (:func:`tree.end_as_zombie`).  The trampoline sits where no process of
    the tree maps anything, so the clones keep it where it is.
    """

    def __init__(self, root: tree.Plan, layouts: Mapping[int, tuple[mm_pb2.MmEntry, Sequence[mm_pb2.Vma]]],
                 *, detached: bool, on_ready: Callable[[_Workspace], None] | None = None,
                 fill_first: Callable[[_Workspace], None] | None = None) -> None:
        self.root, self.layouts, self.detached = root, layouts, detached
        #: Called with each helper once it is emptied, before its children are cloned (what they inherit).
        self.on_ready = on_ready
        #: Maps and fills a helper whose children share pages with it, before they are cloned: they inherit
        #: them copy-on-write (:mod:`ckpt.resources.cow`).  None: every child is cloned from an empty parent.
        self.fill_first = fill_first
        #: Every helper made (zombies too), parents first: what :meth:`kill` ends.
        self.created: list[int] = []
        #: The root's helper and what ends every helper if we fail or die (None until it is made).
        self.root_helper: tree.RootHelper | None = None
        #: The live helpers we hold, parents first.
        self.procs: dict[int, FrozenProcess] = {}
        self._frozen: AbstractContextManager[FrozenProcess] | None = None  # keep referenced: see _seize_helper

    def build(self) -> Iterator[_Workspace]:
        """Yield each live process's emptied helper with its vDSO in place, parents first, its children made."""
        root = self.root
        hint = read_maps(os.getpid())  # the root helper's mappings: it is a copy of this process
        avoid = [(v.start, v.end) for _, vmas in self.layouts.values() for v in vmas]
        self.root_helper = tree.create(root, detached=self.detached)
        self.created.append(root.pid)
        testpoint.point("restore-helper-created")
        parents: dict[int, _Workspace] = {}
        for p in root.walk():
            if p.zombie:
                continue
            mm, vmas = self.layouts[p.pid]
            if p is root:
                proc, self._frozen = _seize_helper(p.pid)
                self.procs[p.pid] = proc
                testpoint.point("restore-helper-seized")
                ws = _prepare(proc, p.pid, mm, vmas, hint, own_fds=True, avoid=avoid)
            else:
                ws = _prepare_clone(self.procs[p.pid], parents.pop(p.pid), mm, vmas, own_fds=not p.shares_files)
            if self.on_ready is not None:
                self.on_ready(ws)
            if self.fill_first is not None and any(cow.inherits(self.layouts[c.pid][1]) for c in p.children
                                                   if not c.zombie):
                self.fill_first(ws)
            for c in p.children:
                self.procs[c.pid] = tree.clone_helper(ws.inj, ws.scratch, c)
                self.created.append(c.pid)
                if not c.zombie:
                    parents[c.pid] = ws
            for c in p.children:  # once every sibling exists: a zombie may be in a group a sibling leads
                if c.zombie:
                    tree.end_as_zombie(ws.inj, ws.scratch, self.procs[c.pid], c)
                    del self.procs[c.pid]  # (kept until it is let go: a failure above kills and collects it)
            testpoint.point("restore-helpers-cloned")
            yield ws

    def hand_over(self, root: _Workspace, entry: process_pb2.ProcessEntry) -> None:
        """Every helper is built and about to run as the image's process: they outlive us from now on.

        Detached, the root's parent (the intermediate) goes now, which would
        send the root the parent-death signal it was given back with its
        limits: cleared across it, then set again.  ``root``: its workspace,
        ``entry``: its record.
        """
        if self.root_helper is None:
            return
        sig = entry.flags.pdeath_signal if self.detached else 0
        if sig:
            root.inj.call(NR.prctl, PR_SET_PDEATHSIG, 0, 0, 0, 0, name="prctl(PR_SET_PDEATHSIG, 0)")
        self.root_helper.hand_over()
        if sig:
            root.inj.call(NR.prctl, PR_SET_PDEATHSIG, sig, 0, 0, 0, name=f"prctl(PR_SET_PDEATHSIG, {sig})")

    def kill(self) -> None:
        """After a failure: kill every helper made, collect the threads we trace, reap them all (the pids are free)."""
        if self.root_helper is None:
            return  # tree.create() failed: it left nothing
        for pid in tree.strays(self.root, self.created):
            tree.discard(pid)
            self.created.append(pid)
        tree.kill(self.created)
        for proc in self.procs.values():
            _kill_helper(proc)
        self.root_helper.reap(self.created)


def _seize_helper(pid: int) -> tuple[FrozenProcess, AbstractContextManager[FrozenProcess]]:
    """Freeze the fresh helper for good: it is released only as the restored process (or killed).

    The second item is the :func:`freeze` context: keep it referenced as long
    as the helper is ours — collecting it would run its exit and let the helper go.
    """
    cm = freeze(pid, guarded=False)
    proc = cm.__enter__()
    proc.pin_cpus = True  # ours: its CPU mask is set by the restore anyway
    return proc, cm


@dataclass
class _Workspace:
    """Where the restorer's injected syscalls run: the trampoline + scratch area in the helper.

    ``vdso_insn_off``: offset of the helper's own vDSO ``syscall`` instruction,
    which the last injected call (removing the trampoline) runs from once the
    vDSO sits where it stays; ``placed``: where the kernel areas (vDSO, vvar)
    are now, by kind — the image's addresses, or on a kernel with another
    vDSO where :func:`ckpt.resources.vdso.arrange` put them (``kernel``, with
    the proxy of the image's vDSO that :func:`_map_and_fill` maps).
    """

    proc: FrozenProcess
    pid: int
    inj: Injector
    scratch: Scratch
    tramp: int
    vdso_insn_off: int | None
    placed: dict[int, tuple[int, int]]
    own_fds: bool = True  # False: the descriptor table is the parent's (CLONE_FILES)
    #: Where every kernel area is now, by kind (``placed``, and any the image does not record).
    areas: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: The image's kernel areas, by kind (what a later image of a staged restore must have too).
    recorded: dict[int, tuple[int, int]] = field(default_factory=dict)
    kernel: vdso.Arrangement | None = None
    #: Resources whose hard limit was lowered (--allow-lower-limits): not compared by the self-check.
    lowered: list[int] = field(default_factory=list)
    #: Kernel areas the image lacks (the process unmapped them), where they are until :func:`_release`.
    gone: dict[int, tuple[int, int]] = field(default_factory=dict)

    #: Trampoline page + scratch pages.
    AREA = (1 + _SCRATCH_PAGES) * PAGE_SIZE

    def relocate(self, wanted: Sequence[tuple[int, int]], mapped: Sequence[tuple[int, int]]) -> None:
        """Move the trampoline and scratch area if a later image maps where they are (``wanted``).

        The new place is free of ``wanted``, of what is ``mapped`` now and of the kernel's areas.
        """
        if not any(s < self.tramp + self.AREA and self.tramp < e for s, e in wanted):
            return
        new = memory.free_area(self.AREA, [*wanted, *mapped, (self.tramp, self.tramp + self.AREA),
                                           *self.placed.values(), *self.areas.values(), *self.recorded.values()])
        _map_trampoline(self.inj, self.proc.mem, new)
        old = self.tramp
        self.inj = Injector(self.proc.threads[self.pid], syscall_insn=new)
        self.scratch = Scratch(new + PAGE_SIZE, self.AREA - PAGE_SIZE, self.proc.mem)
        self.tramp = new
        self.inj.munmap(old, self.AREA)


def _map_trampoline(inj: Injector, mem: ProcMem, at: int) -> None:
    """Map the trampoline (``syscall; int3``) and the scratch pages after it at ``at`` (free)."""
    inj.mmap(at, PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    inj.mmap(at + PAGE_SIZE, _Workspace.AREA - PAGE_SIZE, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mem.write(at, SYSCALL_INSN + INT3)


def _prepare(proc: FrozenProcess, pid: int, mm: mm_pb2.MmEntry, vmas: Sequence[mm_pb2.Vma],
             hint: Sequence | None = None, own_fds: bool = True,
             avoid: Sequence[tuple[int, int]] = ()) -> _Workspace:
    """DESIGN §4 steps 2-3: rseq off, trampoline, empty address space, vDSO/vvar at the image's addresses.

    ``hint``: this process's own mappings, read just before the helpers were
    cloned from it — theirs then, unless another thread mapped something in
    between (the trampoline's MAP_FIXED_NOREPLACE then fails and the helper's
    own are read).  A tree's helpers each have hundreds of mappings (copies
    of this Python process): parsing them once instead of once per helper.
    ``own_fds`` False: the helper shares its parent's descriptor table
    (CLONE_FILES), emptied by the parent already and maybe refilled since.
    ``avoid``: ranges the trampoline must not take besides this image's (the
    other processes' of a tree: their helpers are cloned with it in place).
    Forks are traced too: a helper's children are cloned from it.
    """
    ptrace.setoptions(pid, seize_options() | ptrace.PTRACE_O_EXITKILL | ptrace.PTRACE_O_TRACEFORK)
    # Find the syscall instruction in the helper's vDSO from its mappings (a search of its own
    # would read them again).
    helper_maps = hint if hint is not None else read_maps(pid)
    special = {"[vdso]": memory.Kind.VDSO, "[vvar]": memory.Kind.VVAR, "[vvar_vclock]": memory.Kind.VVAR_VCLOCK}
    current = {special[v.path]: (v.start, v.end) for v in helper_maps if v.path in special}
    if memory.Kind.VDSO in current:
        s, e = current[memory.Kind.VDSO]
        at = proc.mem.read(s, e - s).find(SYSCALL_INSN)
        if at >= 0:
            proc.use_syscall_insn(s + at)
    inj0 = proc.injector()
    rseq = ptrace.get_rseq_configuration(pid)
    if rseq.rseq_abi_pointer:
        inj0.call(NR.rseq, rseq.rseq_abi_pointer, rseq.rseq_abi_size, RSEQ_FLAG_UNREGISTER, rseq.signature)

    vdso_insn_off = None
    if memory.Kind.VDSO in current:
        s, e = current[memory.Kind.VDSO]
        if s <= proc.syscall_insn < e:
            vdso_insn_off = proc.syscall_insn - s
    taken = [(v.start, v.end) for v in helper_maps] + [(v.start, v.end) for v in vmas] + list(avoid)
    area = _Workspace.AREA
    tramp = memory.free_area(area, taken)
    mem = proc.mem
    try:
        _map_trampoline(inj0, mem, tramp)
    except OSError as exc:
        if exc.errno != errno.EEXIST or hint is None:
            raise
        taken = [(v.start, v.end) for v in read_maps(pid)] + [(v.start, v.end) for v in vmas] + list(avoid)
        tramp = memory.free_area(area, taken)
        _map_trampoline(inj0, mem, tramp)
    inj = Injector(proc.threads[pid], syscall_insn=tramp)

    if own_fds:
        inj.call(NR.close_range, 0, 0xFFFFFFFF, 0)
    keep = sorted([(tramp, tramp + area), *current.values()])
    addr = 0
    for s, e in keep + [(TASK_SIZE_MAX, TASK_SIZE_MAX)]:
        if s > addr:
            inj.munmap(addr, s - addr)
        addr = max(addr, e)

    return _place_kernel_areas(proc, inj, tramp, vdso_insn_off, current, taken + keep, mm, vmas, own_fds)


def _prepare_clone(proc: FrozenProcess, parent: _Workspace, mm: mm_pb2.MmEntry, vmas: Sequence[mm_pb2.Vma],
                   own_fds: bool = True) -> _Workspace:
    """:func:`_prepare` for a helper cloned from its parent's (:class:`_Helpers`): only the vDSO to move.

    It has what its parent had when it was cloned: the trampoline, the
    kernel's areas at the parent's image addresses, no rseq area, an empty
    descriptor table (or the parent's, ``own_fds`` False) and the parent's
    ptrace options.
    """
    tramp = parent.tramp
    proc.use_syscall_insn(tramp)
    inj = Injector(proc.threads[proc.pid], syscall_insn=tramp)
    current = dict(parent.areas)
    if cow.inherits(vmas):  # cloned from its filled parent: it keeps only the memory it shares with it
        cow.unmap_rest(inj, vmas, [(tramp, tramp + _Workspace.AREA), *current.values()])
    taken = [(tramp, tramp + _Workspace.AREA), *current.values(), *((v.start, v.end) for v in vmas)]
    ws = _place_kernel_areas(proc, inj, tramp, parent.vdso_insn_off, current, taken, mm, vmas, own_fds)
    ws.relocate([(v.start, v.end) for v in vmas], [])  # not needed when the trampoline avoided the whole tree
    return ws


def _place_kernel_areas(proc: FrozenProcess, inj: Injector, tramp: int, vdso_insn_off: int | None,
                        current: dict[int, tuple[int, int]], taken: Sequence[tuple[int, int]],
                        mm: mm_pb2.MmEntry, vmas: Sequence[mm_pb2.Vma], own_fds: bool) -> _Workspace:
    """Move the kernel's areas from ``current`` to the image's addresses, or on a kernel with another vDSO
    to where :func:`ckpt.resources.vdso.arrange` puts them (a stop-over free of ``taken`` if they must
    cross); the helper's workspace, trampoline at ``tramp``."""
    recorded = memory.special_vmas(vmas)
    here = proc.mem.read(current[memory.Kind.VDSO][0], current[memory.Kind.VDSO][1] - current[memory.Kind.VDSO][0]) \
        if memory.Kind.VDSO in current else b""
    avoid = [*taken, *((v.start, v.end) for v in vmas)]
    try:
        plan = vdso.arrange(recorded, current, mm, here, avoid)
    except (vdso.Unroutable, vdso.VdsoFormatError) as exc:
        raise host.refusal(str(exc)) from exc
    temp = memory.free_area(max(sum(e - s for s, e in current.values()), PAGE_SIZE),
                            [*avoid, *plan.areas.values()])
    memory.move_vdso(inj, current, plan.areas, temp)
    scratch = Scratch(tramp + PAGE_SIZE, _Workspace.AREA - PAGE_SIZE, proc.mem)
    return _Workspace(proc, proc.pid, inj, scratch, tramp, vdso_insn_off, dict(plan.areas), own_fds,
                      {**current, **plan.areas}, {k: (v.start, v.end) for k, v in recorded.items()},
                      plan if plan.routed else None, gone={k: plan.areas[k] for k in plan.gone})


def _map_and_fill(ws: _Workspace, chain: Sequence[Image], vmas: Sequence[mm_pb2.Vma],
                  progress: Callable[[ProgressEvent], None] | None,
                  shmem: memory.ShmemObjects | None = None,
                  filler: memory.PageFiller | None = None,
                  allow_changed: bool = False) -> tuple[int, memory.PageStats, float]:
    """DESIGN §4 step 4, memory: every VMA mapped, every page of the chain written; (VMAs, stats, seconds).

    ``shmem``: the tree's shared memory objects; the ones this process creates are filled here too.
    ``filler``: the threads writing the pages, shared by the processes of a tree.
    """
    t_mem = time.monotonic()
    if ws.kernel is not None and ws.kernel.proxy is not None:  # another kernel: the old vDSO, routed to this one's
        vdso.map_proxy(ws.inj, ws.proc.mem, *ws.kernel.proxy)
    before = set(shmem.first) if shmem is not None else set()
    nvmas = memory.map_vmas(ws.inj, ws.scratch, ws.pid, vmas, shmem, own_fds=ws.own_fds, allow_changed=allow_changed)
    aio.restore_rings(ws.inj, ws.scratch, ws.proc.mem, vmas)  # into the ranges map_vmas left free
    for owner in (set(shmem.first) - before if shmem is not None else ()):
        memory.fill_shmem(chain[-1], owner, *shmem.first[owner])
    on_bytes = (lambda done, total: progress(ProgressEvent("memory", done, total))) if progress else None
    filled = memory.fill_pages(ws.pid, ws.proc.mem, chain, vmas, on_bytes=on_bytes, filler=filler)
    memory.guards.install(ws.inj, vmas)  # once the pages around them are written
    if progress:
        progress(ProgressEvent("filled", filled.bytes_read))
    return nvmas, filled, time.monotonic() - t_mem


@dataclass(frozen=True)
class _FinishOptions:
    """The restore options that matter after memory: how descriptors are reopened."""

    shell_job: bool = False
    inherit_fds: Mapping[int, int] = field(default_factory=dict)
    allow_changed_files: bool = False
    allow_lower_limits: bool = False
    handed_sockets: Mapping[int, int] = field(default_factory=dict)


def _finish(ws: _Workspace, chain: Sequence[Image], mm: mm_pb2.MmEntry, vmas: Sequence[mm_pb2.Vma], cores: Sequence,
            entry: process_pb2.ProcessEntry, opts: _FinishOptions, *,
            shared: files.SharedFiles | None = None, memfds: memory.memfd.MemfdObjects | None = None,
            ghosts: ghost.GhostObjects | None = None, clocks: timens.TimeNamespace | None = None,
            ptys: tty.PtyPairs | None = None) -> list[str]:
    """Everything after memory (DESIGN §4 steps 5-6): resources, mm fields, threads; :func:`_release` does 7.

    ``shared``: the files this process shares with others of its tree.  ``clocks``: the tree's time
    namespace, joined first (before timers are armed on its clocks, and while the helper has one thread).
    """
    proc, pid, inj, scratch = ws.proc, ws.pid, ws.inj, ws.scratch
    if clocks is not None:
        clocks.enter(pid, inj, scratch)
    ctx = RestoreContext(pid=pid, chain=list(chain), entry=entry, proc=proc, inj=inj, scratch=scratch,
                         shell_job=opts.shell_job, inherit_fds=dict(opts.inherit_fds), cores=list(cores),
                         handed_sockets=dict(opts.handed_sockets),
                         allow_changed_files=opts.allow_changed_files, shared_files=shared, memfds=memfds,
                         ghosts=ghosts, files_shared=not ws.own_fds,
                         lowered_limits=ws.lowered if opts.allow_lower_limits else None, ptys=ptys)
    for _name, fn in PROCESS_RESTORERS:
        if fn != THREADS:
            fn(ctx)  # type: ignore[operator]
            continue
        if ws.kernel is not None and ws.kernel.vdso_base is not None:  # AT_SYSINFO_EHDR: the new vDSO
            mm = _with_auxv(mm, vdso.auxv_with_vdso(bytes(mm.auxv), ws.kernel.vdso_base))
        memory.vmflags.restore_def_flags(inj, mm, vmas)  # every mapping made: later ones locked, as they were
        memory.set_mm_map(inj, scratch, pid, mm, allow_changed=opts.allow_changed_files, ghosts=ghosts)
        ctx.injectors = threads.create_threads(proc, inj, scratch, cores, ws.tramp)
        for core in cores:
            ctx.notes.extend(threads.restore_thread_state(ctx.injectors[core.tid], scratch, core))
        memory.vmflags.seal(inj, vmas)  # mseal'ed mappings: sealed once nothing changes them any more
    return ctx.notes


def _lost_unix(e: files_pb2.FileEntry) -> tuple[str, ...]:
    """What of a unix socket's unix_diag account the user let the dump lose: with ``--ext-unix-close`` its
    peer (so its shutdown bits) or a listener's connections waiting from outside; with ``--tolerate
    unix-diag`` a listener's backlog and waiting connections (the image has no backlog)."""
    if e.kind != files_pb2.FileEntry.UNIX:
        return ()
    lost = ("shutdown", "waiting") if e.unix.ext_closed else ()
    if e.unix.state == 10 and not e.unix.HasField("backlog"):  # TCP_LISTEN
        lost += ("backlog", "waiting")
    return lost


def _file_entries(image: Image, pids: Iterable[int]) -> list[files_pb2.FileEntry]:
    """The open files the processes ``pids`` hold, each once."""
    files = {e.id: e for e in image.file_entries()}
    ids = dict.fromkeys(f.file_id for pid in pids for f in image.fds(pid))
    return [files[i] for i in ids if i in files]


#: The lines of an inet socket's account (:func:`ckpt.resources.sockets.inet_lines`) that a connection
#: restored closed (``--tcp-close``) lacks: all but the socket's kind.
_TCP_CLOSED = ("state", "local", "peer", "inq", "outq", "outq_unsent", "rdhup")


def _lost_inet(e: files_pb2.FileEntry) -> tuple[str, ...]:
    """What of an inet socket's account the user let the dump lose: a connection restored closed
    (``--tcp-close``), a listener's waiting connections (``--tolerate listen-queue``), a UDP socket's queued
    datagrams (``--tolerate udp-queue``)."""
    if e.kind != files_pb2.FileEntry.INET:
        return ()
    lost = _TCP_CLOSED if e.inet.tcp_closed else ()
    if e.inet.queue_lost or e.inet.handed_over:  # (handed over: its queue ran on in the kernel meanwhile)
        lost += ("waiting",) if e.inet.state == 10 else ("queued",)  # TCP_LISTEN
    return lost


def _lost_queue(e: files_pb2.FileEntry) -> str | None:
    """The account section (``packet``, ``netlink``) whose ``queued`` line the user let the dump lose
    (``--tolerate packet-queue`` / ``netlink-queue``), or None."""
    if e.kind == files_pb2.FileEntry.PACKET and e.packet.queue_lost:
        return "packet"
    if e.kind == files_pb2.FileEntry.NETLINK and e.netlink.queue_lost:
        return "netlink"
    return None


def _self_check(built: Sequence[tuple[_Workspace, process_pb2.ProcessEntry, Sequence]], root: int,
                tree_pids: Collection[int], image: Image) -> list[str]:
    """Compare the kernel's account of each built (frozen) process with the dump's; RestoreError on a difference.

    Left out: the restorer's own area in each (its trampoline) and, on another kernel, the proxy of the old
    vDSO.  What the release sets last (signal and CPU masks) is compared with what it will set.
    """
    notes = []
    inventory = image.inventory
    theirs, mine = host.recorded(inventory), host.here()
    elsewhere = (theirs.release, theirs.version) != (mine.release, mine.version) or inventory.boot_id != read_boot_id()
    for ws, entry, cores in built:
        if not entry.HasField("observed"):
            notes.append(f"process {ws.pid}: the image holds no account of it by the kernel (an image of an "
                         "older ckpt): restored without the self-check")
            continue
        hidden = [(ws.tramp, ws.tramp + ws.AREA), *ws.gone.values()]  # (the areas gone are unmapped last)
        routed = ws.kernel is not None and ws.kernel.routed
        if routed:
            at, data, _prot = ws.kernel.proxy
            hidden.append((at, at + len(data)))
        given = {c.tid: observed.settled(c.sigmask, ws.proc.threads[c.tid].affinity) for c in cores}
        now = observed.observe(ws.pid, [c.tid for c in cores], hidden=hidden, threads=given)
        outside = (entry.sid not in tree_pids, entry.pgid not in tree_pids)  # leaders not dumped: the restorer's
        if ws.pid == root and outside[0]:
            notes.append(f"process {ws.pid} was in session {entry.sid}, whose leader was not dumped: it is in the "
                         "restorer's session now" + (" and process group" if outside[1] else ""))
        limit_rows = [ln.key for s in now.sections if s.name == "limits" for ln in s.lines]  # in RLIMIT_* order
        lowered = {("limits", limit_rows[r]) for r in ws.lowered if r < len(limit_rows)}
        files = {e.id: e for e in image.file_entries()}
        lost = {(f"unix_diag/{f.fd}", key) for f in image.fds(ws.pid) for key in _lost_unix(files[f.file_id])}
        lost |= {(f"inet/{f.fd}", key) for f in image.fds(ws.pid) for key in _lost_inet(files[f.file_id])}
        lost |= {(f"{kind}/{f.fd}", "queued") for f in image.fds(ws.pid) if (kind := _lost_queue(files[f.file_id]))}
        diffs = observed.differences(entry.observed, now, root=ws.pid == root, routed_vdso=routed,
                                     joins_restorer=outside,
                                     tolerated=lowered | lost, elsewhere=elsewhere)
        if diffs:
            for d in diffs:
                log.error("self-check: process %d: %s", ws.pid, d)
            raise RestoreError(observed.describe(ws.pid, diffs),
                               hint="a state ckpt does not restore yet; --check=off restores it anyway, as it is")
    return notes


def _with_auxv(mm: mm_pb2.MmEntry, auxv: bytes) -> mm_pb2.MmEntry:
    """A copy of ``mm`` with another auxv (the image's record stays as it is)."""
    out = mm_pb2.MmEntry()
    out.CopyFrom(mm)
    out.auxv = auxv
    return out


def _let_go(tree_order: Sequence[tuple[_Workspace | None, Sequence[mm_pb2.Vma], Sequence, process_pb2.ProcessEntry]]
            ) -> list[str]:
    """Release every built process (parents first in ``tree_order``), children first: a stopped child's
    parent, still frozen, is given back its view of that stop (:func:`.resources.jobstop.settle_parent`)."""
    notes: list[str] = []
    by_pid = {entry.pid: (ws, cores, entry) for ws, _vmas, cores, entry in tree_order}
    for ws, vmas, cores, entry in reversed(tree_order):
        assert ws is not None
        notes.extend(_release(ws, vmas, cores, entry))
        parent = by_pid.get(entry.ppid)
        if entry.HasField("job_stop") and parent is not None and parent[0] is not None:
            pws, pcores, pentry = parent
            jobstop.settle_parent(pws.inj, pws.scratch, entry.pid, entry.job_stop, pentry, pcores)
    return notes


def _release(ws: _Workspace, vmas: Sequence[mm_pb2.Vma], cores: Sequence,
             entry: process_pb2.ProcessEntry | None = None) -> list[str]:
    """DESIGN §4 step 7: the trampoline goes (from the relocated vDSO), each thread gets its frame and runs.

    A process that was in a group stop (``entry.job_stop``) is stopped again first (:mod:`.resources.jobstop`;
    the signal that stopped it is written back into ``entry``); notes."""
    proc, pid = ws.proc, ws.pid
    main = proc.threads[pid]
    if ws.vdso_insn_off is None or memory.Kind.VDSO not in ws.placed:
        raise RestoreError("no syscall instruction in the vDSO to remove the trampoline with")
    last = ws.placed[memory.Kind.VDSO][0] + ws.vdso_insn_off
    if ws.gone:  # the kernel areas the process had unmapped: gone too, the vDSO's last call then from its own code
        if memory.Kind.VDSO in ws.gone:
            last = vdso.syscall_insn_in(proc.mem, vmas)
        for s, e in ws.gone.values():
            ws.inj.munmap(s, e - s)
    Injector(main, syscall_insn=last).munmap(ws.tramp, ws.AREA)

    stop = entry.job_stop if entry is not None and entry.HasField("job_stop") else None
    notes: list[str] = []
    for core in cores:
        threads.finish_thread(proc.threads[core.tid], core, detach=stop is None)
    if stop is not None:
        stop.signal, notes = jobstop.enter_stop(proc, stop.signal)
        for core in cores:
            threads.detach_thread(proc.threads[core.tid])
        jobstop.wait_stopped(pid)
    proc.released = True
    proc.mem.close()
    proc._mem = None
    return notes


class StagingMismatch(RestoreError):
    """An image a staged restore cannot take (no layout, not a delta of the images applied so far,
    the vDSO moved): nothing of it was applied; a plain :func:`restore` of the final image still works."""


@dataclass(frozen=True)
class StageStats:
    """One stage of a :class:`StagedRestore`: what it changed in the helper and how long it took (seconds)."""

    image_dir: str
    vmas_mapped: int     # VMAs (or pieces of VMAs) mapped afresh and filled in full from the chain
    ranges_unmapped: int
    pages_written: int
    bytes_written: int
    pages_reset: int     # dropped, or zeroed, in the mappings that stayed
    seconds: float


@dataclass
class _Staged:
    """One process of a staged tree: its frozen helper and what its memory holds now."""

    pid: int
    proc: FrozenProcess
    ws: _Workspace
    layout: list[mm_pb2.Vma] = field(default_factory=list)
    covered: list[tuple[int, int]] = field(default_factory=list)  # every page of the newest image's pagemap
    zero: list[tuple[int, int]] = field(default_factory=list)     # its ZERO pages


class StagedRestore:
    """Build a process tree's memory image by image while its source still runs; :meth:`finish` does the rest.

    For migration (DESIGN §6): the destination restores the pre-copy images
    as they arrive, so the switch-over only applies the final delta and the
    non-memory state.  ``start(first)`` creates a helper for every process
    of the image (their pids, parents, sessions: :mod:`ckpt.resources.tree`),
    empties each, puts its vDSO in place, maps and fills its memory (as
    :func:`restore` does) and keeps them frozen; ``apply(next)`` brings each
    memory to a later image of the same chain — the layout is synced
    (:func:`ckpt.resources.memory.diff_layout`), ranges that stayed mapped get
    only the image's HERE pages, its ZERO pages and the pages it no longer
    has are reset, new ranges are filled in full from the chain;
    ``finish(final)`` does the same with the final image and then everything
    :func:`restore` does after memory: the processes run, and are the ones
    :func:`restore` of the final image would have made.

    Each image must be a delta of the images applied so far (its parent
    chain is exactly them), record every process's layout (``mm-PID.img``,
    written by pre-dumps since staged restores exist) and hold the same
    processes; if not, :class:`StagingMismatch` is raised before anything
    changed and the staged processes stay as they were.  Any other failure
    kills the helpers (the pids are free again) and raises
    :class:`~ckpt.errors.RestoreError`.  :meth:`abort` (idempotent) does the
    same on demand; after a successful :meth:`finish` it does nothing — the
    processes are the live ones.  Call every method from one thread: ptrace
    requests must come from the thread that seized the helpers.  The options
    are those of :func:`restore`.
    """

    def __init__(self, *, detached: bool = False, pidfile: str | os.PathLike[str] | None = None,
                 shell_job: bool = False, inherit_fds: Mapping[int, int] | None = None,
                 progress: Callable[[ProgressEvent], None] | None = None, allow_changed_files: bool = False,
                 cpu_cap: Iterable[str] | None = None, check: bool = True, allow_lower_limits: bool = False) -> None:
        self.detached = detached
        self.check = check
        self.cpu_cap = cpu_cap
        self.pidfile = pidfile
        self.progress = progress
        self._opts = _FinishOptions(shell_job, dict(inherit_fds or {}), allow_changed_files, allow_lower_limits)
        self.pid = 0  # the root's
        #: "new" → "staged" (frozen helpers hold the memory so far) → "done" (they run) or "aborted".
        self.state = "new"
        self.stages: list[StageStats] = []
        self._procs: dict[int, _Staged] = {}  # parents first
        self._helpers: _Helpers | None = None  # every helper made, for abort
        self._chain: list[Image] = []
        self._zombies: list[int] = []  # made with the tree by start(): every later image must have them
        self._shmem = memory.ShmemObjects()
        self._waited = 0.0
        self._file_notes: list[str] = []  # mapped files taken as they are (--allow-changed-files)

    @property
    def pids(self) -> list[int]:
        """Every process created (the root first): what to kill to end a stage in progress at once."""
        return list(self._helpers.created) if self._helpers is not None else []

    # --- stages ------------------------------------------------------------------------------

    def start(self, image_dir: str | os.PathLike[str]) -> StageStats:
        """The helpers with the image's pids, emptied, vDSO in place, the image's memory mapped and filled."""
        if self.state != "new":
            raise UsageError(f"StagedRestore.start: already {self.state}")
        t0 = time.monotonic()
        chain = _open_chain(image_dir, pre_dump=True)
        image = chain[-1]
        cpu_features.check_image(image.inventory, self.cpu_cap)  # before any process exists
        root = tree.plan(image.processes)
        layouts = _layouts(image)
        host.check_areas(image.inventory, layouts.values())
        for mm, vmas in layouts.values():
            self._file_notes.extend(memory.check_files(mm, vmas, allow_changed=self._opts.allow_changed_files))
        self._waited = sum(wait_pid_free(p.pid) for p in root.walk())
        self.pid, self.state = root.pid, "staged"
        self._zombies = sorted(p.pid for p in root.walk() if p.zombie)
        self._helpers = _Helpers(root, layouts, detached=self.detached)
        nvmas = pages = nbytes = 0
        with self._failing(), memory.PageFiller() as filler:
            for ws in self._helpers.build():
                vmas = layouts[ws.pid][1]
                n, filled, _ = _map_and_fill(ws, chain, vmas, self.progress, self._shmem, filler,
                                             self._opts.allow_changed_files)
                st = self._procs[ws.pid] = _Staged(ws.pid, ws.proc, ws)
                self._took(st, chain, vmas)
                testpoint.point("restore-memory-filled")
                nvmas, pages, nbytes = nvmas + n, pages + filled.pages_stored, nbytes + filled.bytes_read
            self._chain = list(chain)
        return self._stage(image_dir, nvmas, 0, pages, nbytes, 0, t0)

    def apply(self, image_dir: str | os.PathLike[str]) -> StageStats:
        """Bring the staged memory to the next image (a delta of the images applied so far)."""
        t0 = time.monotonic()
        chain, layouts = self._next(image_dir, pre_dump=True)
        with self._failing():
            totals = self._sync_all(chain, layouts)
            self._chain = list(chain)
            return self._stage(image_dir, *totals, t0)

    def finish(self, image_dir: str | os.PathLike[str], before_hand_over: Callable[[], None] | None = None,
               handed_sockets: Mapping[int, int] | None = None) -> RestoreStats:
        """Sync to the final image, then everything after memory: the processes run on return.

        ``before_hand_over``, ``handed_sockets``: as :func:`restore`'s.
        """
        t0 = time.monotonic()
        if handed_sockets:
            self._opts = replace(self._opts, handed_sockets=dict(handed_sockets))
        chain, layouts = self._next(image_dir)
        image = chain[-1]
        records = {pid: _process_records(image, pid) for pid in layouts}
        cttys = sorted(pid for pid, (_, entry) in records.items() if entry.HasField("ctty"))
        if cttys:  # given as the helpers are made, before their children: those are made already
            raise StagingMismatch(f"{image.path}: processes {cttys} have a pseudo-terminal of the image as their "
                                  "controlling terminal, which only a plain restore gives back")
        host.check_areas(image.inventory, layouts.values())
        for mm, vmas in layouts.values():
            self._file_notes.extend(memory.check_files(mm, vmas, allow_changed=self._opts.allow_changed_files))
        shared = (files.SharedFiles({pid: image.fds(pid) for pid in layouts}, image.file_entries())
                  if len(layouts) > 1 else None)
        _object_contents(self._shmem, image)
        clocks = timens.TimeNamespace(timens.plan(image.inventory))
        ptys = tty.PtyPairs(image.file_entries())
        with self._failing():
            clocks.check()
            for pid, (cores, _entry) in records.items():
                threads.check_xstate(pid, cores)
            t_mem = time.monotonic()
            stage = self._stage(image_dir, *self._sync_all(chain, layouts), t0)
            self._chain = list(chain)
            mem_s = time.monotonic() - t_mem
            notes = list(dict.fromkeys(self._file_notes))  # each file once, however many stages saw it
            try:
                for pid, st in self._procs.items():
                    mm, vmas = layouts[pid]
                    cores, entry = records[pid]
                    notes.extend(_finish(st.ws, chain, mm, vmas, cores, entry, self._opts, shared=shared,
                                         memfds=self._shmem.memfds, ghosts=self._shmem.ghosts, clocks=clocks,
                                         ptys=ptys))
                self._shmem.memfds.add_seals()
                self._shmem.sysv.finish()
                self._shmem.ghosts.finish()
                notes.extend(ptys.finish({pid: (st.ws.inj, st.ws.scratch, records[pid][1])
                                          for pid, st in self._procs.items()}))
                t_check = time.monotonic()
                if self.check:
                    notes.extend(_self_check([(st.ws, records[pid][1], records[pid][0])
                                              for pid, st in self._procs.items()], self.pid, self.pids,
                                             image))
                check_s = time.monotonic() - t_check
                testpoint.point("restore-handing-over")
                if before_hand_over is not None:
                    before_hand_over()
                self._helpers.hand_over(self._procs[self.pid].ws, records[self.pid][1])
                notes.extend(_let_go([(self._procs[pid].ws, layouts[pid][1], records[pid][0], records[pid][1])
                                      for pid in self._procs]))
                notes.extend(tcp.unlock_restored(_file_entries(image, self._procs)))
            finally:
                if shared is not None:
                    shared.close()
                self._shmem.memfds.close()
                self._shmem.ghosts.close()
                ptys.close()
        self.state = "done"
        _write_pidfile(self.pidfile, self.pid)
        staged = sum(s.pages_written for s in self.stages[:-1])
        return RestoreStats(pid=self.pid, tids=tuple(c.tid for c in records[self.pid][0]),
                            vmas=sum(1 for _, vmas in layouts.values() for v in vmas
                                     if v.kind not in memory.SPECIAL_KINDS),
                            pages_written=stage.pages_written, bytes_written=stage.bytes_written,
                            pid_wait_seconds=self._waited, memory_seconds=mem_s,
                            total_seconds=time.monotonic() - t0, detached=self.detached, notes=tuple(notes),
                            staged_pages=staged, processes=tuple(self.pids), check_seconds=check_s)

    def abort(self) -> None:
        """Kill the staged helpers and collect them (the pids are free again); nothing once they run or are gone."""
        if self.state != "staged":
            if self.state == "new":
                self.state = "aborted"
            return
        self.state = "aborted"
        if self._helpers is not None:
            self._helpers.kill()
        self._shmem.sysv.abort()
        self._procs.clear()

    # --- internals ---------------------------------------------------------------------------

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Any failure inside kills the helpers: a half-synced memory image is of no use."""
        try:
            yield
        except BaseException as exc:
            self.abort()
            raise _restore_error(exc, self.pid)

    def _next(self, image_dir: str | os.PathLike[str], *, pre_dump: bool = False
              ) -> tuple[list[Image], dict[int, tuple[mm_pb2.MmEntry, list[mm_pb2.Vma]]]]:
        """Open the next image; StagingMismatch (nothing changed) if it cannot follow the applied ones."""
        if self.state != "staged":
            raise UsageError(f"StagedRestore: nothing staged ({self.state})")
        chain = _open_chain(image_dir, pre_dump=pre_dump)
        newest = chain[-1]
        zombies = sorted(p.pid for p in newest.processes if p.zombie)
        if zombies != self._zombies:
            raise StagingMismatch(f"{newest.path}: has zombies {zombies}, the staged tree {self._zombies}")
        layouts = _layouts(newest)
        if sorted(layouts) != sorted(self._procs):
            raise StagingMismatch(f"{newest.path}: is an image of processes {sorted(layouts)}, the staged ones are "
                                  f"{sorted(self._procs)}")
        if [img.id for img in chain[:-1]] != [img.id for img in self._chain]:
            raise StagingMismatch(f"{newest.path}: is not a delta of the images staged so far "
                                  f"(its parent chain has {len(chain) - 1} images, the newest staged is "
                                  f"{self._chain[-1].path} with id {self._chain[-1].id})")
        for pid, (_mm, vmas) in layouts.items():
            placed = {k: (v.start, v.end) for k, v in memory.special_vmas(vmas).items()}
            if placed != self._procs[pid].ws.recorded:
                raise StagingMismatch(f"{newest.path}: the vDSO/vvar areas of process {pid} moved since the first "
                                      "staged image")
        return chain, layouts

    def _sync_all(self, chain: list[Image], layouts: Mapping[int, tuple[mm_pb2.MmEntry, list[mm_pb2.Vma]]]
                  ) -> tuple[int, int, int, int, int]:
        """:meth:`_sync` of every process; the sums of its counts."""
        totals = [0, 0, 0, 0, 0]
        with memory.PageFiller() as filler:  # one set of fill threads for the tree
            for pid, st in self._procs.items():
                for i, n in enumerate(self._sync(st, chain, layouts[pid][1], filler)):
                    totals[i] += n
        return totals[0], totals[1], totals[2], totals[3], totals[4]

    def _sync(self, st: _Staged, chain: list[Image], vmas: list[mm_pb2.Vma],
              filler: memory.PageFiller | None = None) -> tuple[int, int, int, int, int]:
        """Turn one staged memory into the newest image's; (mapped, unmapped, pages, bytes, reset)."""
        ws, pid, mem = st.ws, st.pid, st.proc.mem
        diff = memory.diff_layout(st.layout, vmas)
        ws.relocate([(v.start, v.end) for v in diff.added], [(v.start, v.end) for v in st.layout])
        for s, e in diff.removed:
            ws.inj.munmap(s, e - s)
        before = set(self._shmem.first)
        nmapped = memory.map_vmas(ws.inj, ws.scratch, pid, diff.added, self._shmem, own_fds=ws.own_fds,
                                  allow_changed=self._opts.allow_changed_files)
        for owner in set(self._shmem.first) - before:  # a shared object this process creates: its pages
            memory.fill_shmem(chain[-1], owner, *self._shmem.first[owner])
        top = len(chain) - 1
        pm = chain[top].pagemap(pid)
        here_state, zero_state = int(PageState.HERE), int(PageState.ZERO)
        here = [PageSource(v, n, top, d) for v, n, s, d in zip(pm.vaddrs, pm.nr_pages, pm.states, pm.data_offsets)
                if s == here_state]
        sources = memory.clip_sources(here, diff.kept)
        if diff.added:  # new ranges: every page of them, from wherever the chain holds it
            sources += resolve_pages(chain, pid, within=memory.merge_intervals((v.start, v.end) for v in diff.added))
            sources.sort(key=lambda src: src.vaddr)
        covered, zero = _coverage(pm), _coverage(pm, zero_state)
        kept = list(diff.kept)
        lost = memory.intersect(memory.subtract(_coverage(pm, int(PageState.PARENT)), st.covered), kept)
        if lost:  # what resolve_pages refuses for a plain restore: never a silently zero page
            s, e = lost[0]
            raise ChainError(chain[top].path, f"pages {s:#x}-{e:#x} of process {pid} are marked PARENT but the "
                                              f"parent {chain[top - 1].path} does not have them")
        # Pages of the kept ranges that hold data of an earlier image but must not any more:
        # the ones the newest image says are ZERO (unless they were ZERO already), and the
        # ones it no longer has at all (dropped by the process: a fresh mapping's content).
        reset = memory.reset_pages(ws.inj, mem, vmas, memory.intersect(memory.subtract(zero, st.zero), kept),
                                   zero=True)
        reset += memory.reset_pages(ws.inj, mem, vmas, memory.intersect(memory.subtract(st.covered, covered), kept),
                                    zero=False)
        on_bytes = (lambda done, total: self.progress(ProgressEvent("memory", done, total))) if self.progress else None
        filled = memory.fill_pages(pid, mem, chain, vmas, on_bytes=on_bytes, sources=sources, filler=filler)
        memory.guards.install(ws.inj, diff.added)  # a kept range kept its guards (they are in its mapping key)
        self._took(st, chain, vmas, covered, zero)
        return nmapped, len(diff.removed), filled.pages_stored, filled.bytes_read, reset

    @staticmethod
    def _took(st: _Staged, chain: list[Image], vmas: Sequence[mm_pb2.Vma],
              covered: list[tuple[int, int]] | None = None, zero: list[tuple[int, int]] | None = None) -> None:
        """Remember what a staged memory now holds: the newest image's layout and page coverage."""
        if covered is None or zero is None:
            pm = chain[-1].pagemap(st.pid)
            covered, zero = _coverage(pm), _coverage(pm, int(PageState.ZERO))
        st.layout = [v for v in vmas if v.kind not in memory.SPECIAL_KINDS]
        st.covered, st.zero = covered, zero

    def _stage(self, image_dir: str | os.PathLike[str], mapped: int, unmapped: int, pages: int, nbytes: int,
               reset: int, t0: float) -> StageStats:
        st = StageStats(os.fspath(image_dir), mapped, unmapped, pages, nbytes, reset, time.monotonic() - t0)
        self.stages.append(st)
        return st


def _layouts(image: Image) -> dict[int, tuple[mm_pb2.MmEntry, list[mm_pb2.Vma]]]:
    """{pid: (mm, vmas)} of every live process of ``image``, parents first; StagingMismatch without a layout."""
    out = {}
    for p in image.processes:
        if p.zombie:
            continue
        if image.kind is ImageKind.PRE_DUMP and not image.has(kinds.MM.file_name(p.pid)):
            raise StagingMismatch(f"{image.path}: records no memory layout for process {p.pid} "
                                  "(a pre-dump written before pre-dumps carried it)")
        mm, vmas = image.mm(p.pid)
        if (why := cow.staged_refusal(p.pid, vmas)) is not None:
            raise StagingMismatch(f"{image.path}: {why}")
        if any(memory.is_object_view(v) or aio.is_ring(v) for v in vmas):  # pre-dumps store no such objects
            raise StagingMismatch(f"{image.path}: process {p.pid} maps a memfd, System V shared memory, a "
                                  "deleted file, a tmpfs file or an AIO ring, which only a plain restore recreates")
        out[p.pid] = (mm, list(vmas))
    return out


def _coverage(pm: Pagemap, state: int | None = None) -> list[tuple[int, int]]:
    """Address intervals of a pagemap's ranges (of one state, or all), touching ones joined.

    A pagemap's ranges are sorted and never overlap (``verify`` checks it): one pass.
    """
    ps = pm.page_size
    out: list[list[int]] = []
    for v, n, st in zip(pm.vaddrs, pm.nr_pages, pm.states):
        if state is not None and st != state:
            continue
        if out and out[-1][1] == v:
            out[-1][1] = v + n * ps
        else:
            out.append([v, v + n * ps])
    return [(s, e) for s, e in out]


def wait_restored(pid: int) -> int:
    """Wait for a restored (not detached) process to end; its exit status as a shell would give it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
