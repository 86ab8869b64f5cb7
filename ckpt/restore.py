"""The restore controller: turn a stopped helper process into the image's process, same pid and tids.

Order (DESIGN §4, each step a lesson of the prototype):

1. wait until the pid is free (a killed process keeps it 1-2 s here), create the
   helper with ``clone3(set_tid=[pid])`` — from this process (ckpt stays the
   parent and can wait for it) or, ``detached``, from an intermediate that exits
   at once so the helper is reparented like a daemon;
2. seize it (TRACECLONE | EXITKILL), unregister its rseq area (it lives in a
   TLS that is about to disappear);
3. map the trampoline (``syscall; int3``) and a scratch area at an address free
   in both layouts; from now on every syscall runs from there;
4. close_range; munmap everything below TASK_SIZE_MAX but the trampoline and the
   vdso/vvar pages; move those to the image's addresses;
5. memory: mmap every VMA, fill the pages, (process-wide resources: the
   :data:`PROCESS_RESTORERS` hook), ``PR_SET_MM_MAP`` with the exe;
6. threads by clone3 with their old tids, then per-thread registrations;
7. munmap the trampoline from the relocated vDSO's own ``syscall``, set each
   thread's final frame/xstate/mask and PTRACE_DETACH it.

If anything fails, the helper (and every thread created) is killed and reaped
and :class:`~ckpt.errors.RestoreError` says why.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .control.inject import Injector, Scratch
from .control.seize import SEIZE_OPTIONS, FrozenProcess, freeze
from .errors import CkptError, RestoreError, UsageError
from .image.chain import open_chain
from .kernel import clone, ptrace
from .kernel.arch_x86_64 import INT3, NR, PAGE_SIZE, SYSCALL_INSN, TASK_SIZE_MAX
from .kernel.libc import libc
from .kernel.mman import MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE
from .kernel.task_abi import RSEQ_FLAG_UNREGISTER
from .procfs.maps import read_maps
from .progress import ProgressEvent
from .resources import creds, files, limits, memory, signals, threads
from .resources.context import RestoreContext

__all__ = ["RestoreStats", "PROCESS_RESTORERS", "THREADS", "restore", "wait_restored", "wait_pid_free", "PID_FREE_TIMEOUT"]

#: Seconds to wait for a just-killed process to release its pid (its parent reaps about once a second).
PID_FREE_TIMEOUT = 5.0
_SCRATCH_PAGES = 4


def restore_files(ctx: RestoreContext) -> None:
    """Every fd at its number, opened by the helper itself while it still has the restorer's credentials."""
    policy = files.StdioPolicy(shell_job=ctx.shell_job, inherit=dict(ctx.inherit_fds),
                               allow_changed=ctx.allow_changed_files)
    ctx.notes.extend(files.restore(ctx.inj, ctx.image.fds(ctx.pid), ctx.image.file_entries(),
                                   content=files.content_from_image(ctx.image), policy=policy, scratch=ctx.scratch))


def restore_sigactions(ctx: RestoreContext) -> None:
    """The image's dispositions replace the helper's (its handlers are unmapped by now)."""
    signals.restore_sigactions(ctx.inj, ctx.entry.sigactions, scratch=ctx.scratch)


def restore_limits(ctx: RestoreContext) -> None:
    """cwd, root, umask, comm, personality, prctl flags, rlimits (after files and memory), session."""
    ctx.notes.extend(limits.restore(ctx.inj, ctx.entry, scratch=ctx.scratch))


def restore_creds(ctx: RestoreContext) -> None:
    """Credentials are per thread: each thread drops to the image's, leader last."""
    for tid in sorted(ctx.injectors, key=lambda t: t == ctx.pid):
        creds.restore(ctx.injectors[tid], ctx.entry, scratch=ctx.scratch)


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
#: pending signals last, once every thread blocks all signals (its own mask is set
#: as it is let go, so no injected syscall dequeues one).
PROCESS_RESTORERS: list[tuple[str, Callable[[RestoreContext], None] | str]] = [
    ("files", restore_files),
    ("sigactions", restore_sigactions),
    ("limits", restore_limits),
    ("mm and threads", THREADS),
    ("creds", restore_creds),
    ("pending signals", restore_pending),
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


def wait_pid_free(pid: int, timeout: float = PID_FREE_TIMEOUT) -> float:
    """Wait until ``/proc/PID`` is gone; RestoreError naming the holder if a live process keeps it."""
    t0 = time.monotonic()
    while os.path.exists(f"/proc/{pid}"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            state = data[data.rindex(b")") + 2:].split()[0].decode()
            comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
        except (OSError, ValueError):
            continue
        if state not in ("Z", "X") or time.monotonic() - t0 > timeout:
            raise RestoreError(f"pid {pid} is taken by a running process ({comm}, state {state})" if state not in ("Z", "X")
                               else f"pid {pid} is still held by an unreaped zombie ({comm}) after {timeout:.0f}s",
                               hint="stop that process, or restore into a new pid namespace (not implemented yet)")
        time.sleep(0.01)
    return time.monotonic() - t0


def _helper_main() -> None:
    """The helper's life before we seize it: a raw copy of this interpreter pausing for ever."""
    try:
        while True:
            libc.pause()
    finally:
        os._exit(127)


def _create_helper(pid: int, detached: bool) -> None:
    """clone3(set_tid=[pid]) a pausing helper, directly or through an intermediate that exits."""
    if not detached:
        try:
            child = clone.clone3(set_tid=[pid])
        except OSError as exc:
            raise RestoreError(_clone_failure(pid, exc.errno)) from exc
        if child == 0:
            _helper_main()
        return
    mid = clone.clone3()
    if mid == 0:
        try:
            if clone.clone3(set_tid=[pid]) == 0:
                _helper_main()
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(mid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RestoreError(_clone_failure(pid, code))


def _clone_failure(pid: int, err: int | None) -> str:
    if err == errno.EEXIST:
        return f"pid {pid} is taken (clone3 set_tid: EEXIST)"
    if err == errno.EPERM:
        return f"clone3 with set_tid={pid} needs CAP_SYS_ADMIN (run as root)"
    return f"cannot create a process with pid {pid}: {os.strerror(err or 0)}"


def _kill_helper(proc: FrozenProcess | None, pid: int, ours: bool) -> None:
    """SIGKILL the half-built process and collect every thread we trace (and the process if it is our child)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    tids = sorted(proc.threads, key=lambda t: t == pid) if proc is not None else []
    for tid in tids:  # non-leaders first: a traced leader is not reported while traced zombie threads exist
        if proc is not None and proc.threads[tid].gone:
            continue
        try:
            while True:
                st = ptrace.waitpid(tid)
                if st is None or st.gone:
                    break
        except ChildProcessError:
            pass
    if proc is not None:
        proc.released = True
        if proc._mem is not None:
            proc._mem.close()
    if ours:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def restore(image_dir: str | os.PathLike[str], *, detached: bool = False, pidfile: str | os.PathLike[str] | None = None,
            shell_job: bool = False, inherit_fds: Mapping[int, int] | None = None,
            progress: Callable[[ProgressEvent], None] | None = None,
            allow_changed_files: bool = False) -> RestoreStats:
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
    inode changed since the dump (a note says which); mapped files and the
    executable are still checked (their unsaved pages come from the file).
    """
    t_start = time.monotonic()
    chain = open_chain(image_dir)
    image = chain[-1]
    procs = image.processes
    if len(procs) != 1:
        raise UsageError(f"{image.path}: holds {len(procs)} processes; restoring a process tree is not supported yet")
    pid = procs[0].pid
    mm, vmas = image.mm(pid)
    cores = image.threads(pid)
    entry = image.process(pid)
    if not cores or cores[0].tid != pid:
        raise RestoreError(f"{image.path}: the thread list does not start with the leader {pid}")
    memory.check_files(mm, vmas)
    waited = wait_pid_free(pid)

    _create_helper(pid, detached)
    proc: FrozenProcess | None = None
    try:
        cm = freeze(pid)
        proc = cm.__enter__()
        stats = _build(proc, pid, chain, mm, vmas, cores, entry, shell_job, dict(inherit_fds or {}), progress,
                       allow_changed_files)
    except BaseException as exc:
        _kill_helper(proc, pid, ours=not detached)
        if isinstance(exc, CkptError) and not isinstance(exc, RestoreError):
            raise RestoreError(f"restore of {pid} failed: {exc}", hint=exc.hint) from exc
        if isinstance(exc, OSError):
            raise RestoreError(f"restore of {pid} failed: {exc}") from exc
        raise
    if pidfile is not None:
        with open(pidfile, "w") as f:
            f.write(f"{pid}\n")
    vmas_n, pages, nbytes, mem_s, notes = stats
    return RestoreStats(pid=pid, tids=tuple(c.tid for c in cores), vmas=vmas_n, pages_written=pages,
                        bytes_written=nbytes, pid_wait_seconds=waited, memory_seconds=mem_s,
                        total_seconds=time.monotonic() - t_start, detached=detached, notes=tuple(notes))


def _build(proc: FrozenProcess, pid: int, chain, mm, vmas, cores, entry, shell_job: bool,  # noqa: ANN001
           inherit_fds: dict[int, int], progress: Callable[[ProgressEvent], None] | None = None,
           allow_changed_files: bool = False) -> tuple[int, int, int, float, list[str]]:
    main = proc.threads[pid]
    ptrace.setoptions(pid, SEIZE_OPTIONS | ptrace.PTRACE_O_EXITKILL)
    threads.check_xstate(pid, cores)
    inj0 = proc.injector()
    rseq = ptrace.get_rseq_configuration(pid)
    if rseq.rseq_abi_pointer:
        inj0.call(NR.rseq, rseq.rseq_abi_pointer, rseq.rseq_abi_size, RSEQ_FLAG_UNREGISTER, rseq.signature)

    helper_maps = read_maps(pid)
    special = {memory.Kind.VDSO: "[vdso]", memory.Kind.VVAR: "[vvar]", memory.Kind.VVAR_VCLOCK: "[vvar_vclock]"}
    current = {k: (v.start, v.end) for v in helper_maps for k, n in special.items() if v.path == n}
    vdso_insn_off = None
    if memory.Kind.VDSO in current:
        s, e = current[memory.Kind.VDSO]
        if s <= proc.syscall_insn < e:
            vdso_insn_off = proc.syscall_insn - s
    taken = [(v.start, v.end) for v in helper_maps] + [(v.start, v.end) for v in vmas]
    area = (1 + _SCRATCH_PAGES) * PAGE_SIZE
    tramp = memory.free_area(area, taken)
    inj0.mmap(tramp, PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    inj0.mmap(tramp + PAGE_SIZE, area - PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    mem = proc.mem
    mem.write(tramp, SYSCALL_INSN + INT3)
    scratch = Scratch(tramp + PAGE_SIZE, area - PAGE_SIZE, mem)
    inj = Injector(main, syscall_insn=tramp)

    inj.call(NR.close_range, 0, 0xFFFFFFFF, 0)
    keep = sorted([(tramp, tramp + area), *current.values()])
    addr = 0
    for s, e in keep + [(TASK_SIZE_MAX, TASK_SIZE_MAX)]:
        if s > addr:
            inj.munmap(addr, s - addr)
        addr = max(addr, e)

    temp_size = sum(e - s for s, e in current.values())
    temp = memory.free_area(max(temp_size, PAGE_SIZE), taken + keep)
    memory.move_vdso(inj, mem, current, mm, vmas, temp)

    t_mem = time.monotonic()
    nvmas = memory.map_vmas(inj, scratch, pid, vmas)
    on_bytes = (lambda done, total: progress(ProgressEvent("memory", done, total))) if progress else None
    filled = memory.fill_pages(pid, mem, chain, vmas, on_bytes=on_bytes)
    if progress:
        progress(ProgressEvent("filled", filled.bytes_read))
    mem_s = time.monotonic() - t_mem

    ctx = RestoreContext(pid=pid, chain=list(chain), entry=entry, proc=proc, inj=inj, scratch=scratch,
                         shell_job=shell_job, inherit_fds=inherit_fds, cores=list(cores),
                         allow_changed_files=allow_changed_files)
    for _name, fn in PROCESS_RESTORERS:
        if fn != THREADS:
            fn(ctx)  # type: ignore[operator]
            continue
        memory.set_mm_map(inj, scratch, pid, mm)
        ctx.injectors = threads.create_threads(proc, inj, scratch, cores, tramp)
        for core in cores:
            ctx.notes.extend(threads.restore_thread_state(ctx.injectors[core.tid], scratch, core))

    # The last injected call removes the trampoline itself: run it from the relocated vDSO.
    recorded = memory.special_vmas(vmas)
    if vdso_insn_off is None or memory.Kind.VDSO not in recorded:
        raise RestoreError("no syscall instruction in the vDSO to remove the trampoline with")
    Injector(main, syscall_insn=recorded[memory.Kind.VDSO].start + vdso_insn_off).munmap(tramp, area)

    for core in cores:
        threads.finish_thread(proc.threads[core.tid], core)
    proc.released = True
    mem.close()
    proc._mem = None
    return nvmas, filled.pages_stored, filled.bytes_read, mem_s, ctx.notes


def wait_restored(pid: int) -> int:
    """Wait for a restored (not detached) process to end; its exit status as a shell would give it."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
