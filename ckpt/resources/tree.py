"""Process trees: which processes a dump takes, and rebuilding them with the same pids, sessions and groups.

Dump: ``-t PID`` means the tree rooted at PID, as in CRIU.  :func:`freeze_tree`
freezes top-down — a process is frozen before its children are listed
(``/proc/PID/task/TID/children`` of each of its threads), so a frozen parent
can fork no child we would miss, and a child frozen after it can only have
forked before it was frozen, where the listing sees it.  A child that exited
and was not reaped is a zombie: it cannot be seized and holds nothing but its
ids and wait status (field 52 of ``/proc/PID/stat``), which the inventory
records.

Restore: :func:`create` makes the root's *helper*, a ``clone3`` copy of the
restorer (made from a forked child of it) with the root's pid that takes its
session (``setsid``) or, as a group leader, its group (``setpgid(0, 0)``)
and waits until it is seized.  Until the hand-over, every helper ends when
the restorer ends, and a failed restore reaps them all (:class:`RootHelper`).
Every other helper is cloned later from its parent's, once that one is
emptied (the restore's ``_Helpers``): :func:`clone_helper` injects
``clone3(set_tid=[pid])`` into the parent, and the child, traced from birth
(PTRACE_O_TRACEFORK), takes its ids the same way — so parent links,
inherited sessions and groups come out as they were, and no helper but the
root is a copy of the restorer to empty again.  A zombie's helper ends at
once with the recorded status (:func:`end_as_zombie`) and stays a zombie of
its parent.  A member of another group of its session joins it later
(``setpgid``, injected with the rest of the session state once every group
leader exists).

A child that shares its parent's descriptor table (``CLONE_FILES``, found
with kcmp at dump) is created with ``CLONE_FILES`` again, and the table is
restored once, by the parent.  What is refused: a process sharing fs, signal
handlers or its address space with its parent without being a thread
(:func:`shared_tables`), a process whose session is neither its own nor its
parent's (its session leader would have to be recreated as a helper), and a
tree whose pids do not link up (:func:`plan`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import select
import signal
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import NoReturn

from ..control.inject import Injector, Scratch
from ..control.seize import FrozenProcess, freeze
from ..errors import RestoreError, TargetGone, Unsupported
from ..image.records import ProcessInfo
from ..kernel import clone, ptrace
from ..kernel.arch_x86_64 import NR
from ..kernel.fileio import close_all_but
from ..kernel.kcmp import KCMP_FILES, KCMP_FS, KCMP_SIGHAND, KCMP_VM, kcmp
from ..kernel.libc import syscall
from ..kernel.prctl import PR_GET_CHILD_SUBREAPER, PR_SET_CHILD_SUBREAPER, PR_SET_NAME
from ..kernel.ptrace import StopKind
from ..procfs.stat import read_stat

__all__ = ["Zombie", "FrozenTree", "children", "kill", "descendants", "zombies_of", "unsupported_tree", "freeze_tree", "Plan", "plan", "RootHelper", "create", "clone_helper", "strays", "discard", "end_as_zombie",
           "CREATE_TIMEOUT"]

#: Seconds to wait for every helper of a tree to report.
CREATE_TIMEOUT = 10.0
_REPORT = struct.Struct("=ii")  # (the helper's pid, or 0 if clone3 failed; errno, 0 once it is made)
_SIGACTION_SIZE = 32  # the kernel's struct sigaction on x86_64: handler, flags, restorer, mask
_ALL_SIGNALS = (1 << 64) - 1  # a blocked mask with every signal (the kernel leaves out SIGKILL and SIGSTOP)


# --- dump ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Zombie:
    """A child that exited and was not reaped: its ids and what its parent's ``waitpid`` will get."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start_time: int
    wait_status: int
    comm: str


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (threads fork too), in pid order."""
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise TargetGone(pid, f"process {pid} is gone") from None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue  # the thread exited meanwhile
    return sorted(out)


def unsupported_tree(root: int, descendants: Sequence[int], what: str) -> Unsupported:
    """The refusal of ``what`` (a pre-dump, a migration…) for a process with descendants."""
    shown = ", ".join(map(str, descendants[:8])) + (", ..." if len(descendants) > 8 else "")
    return Unsupported(f"process {root} has {len(descendants)} descendant(s) ({shown}): {what} of a process tree "
                       "is not supported yet", hint="dump the whole tree with `ckpt dump`, or let the children exit first")


def descendants(pid: int, *, include_root: bool = False) -> list[int]:
    """The live processes below ``pid`` as they are now (it runs: a snapshot, parents first; no zombie)."""
    out = [pid] if include_root else []
    queue = [pid]
    while queue:
        try:
            kids = [k for k in children(queue.pop(0)) if _alive(k)]
        except TargetGone:
            continue
        out.extend(kids)
        queue.extend(kids)
    return out


def zombies_of(parents: Sequence[int]) -> list[Zombie]:
    """The unreaped children of ``parents`` as they are now (a pre-dump records them for a staged restore)."""
    out = []
    for parent in parents:
        try:
            kids = children(parent)
        except TargetGone:
            continue
        for kid in kids:
            try:
                st = read_stat(kid)
            except TargetGone:
                continue
            if st.state == "Z" and st.ppid == parent:
                out.append(Zombie(kid, st.ppid, st.pgrp, st.session, st.starttime, st.exit_code, st.comm))
    return out


def _alive(pid: int) -> bool:
    """Not a zombie (nor gone): a process with memory to copy."""
    try:
        return read_stat(pid).state not in ("Z", "X")
    except TargetGone:
        return False


@dataclass
class FrozenTree:
    """Every live process of the tree frozen (root first, parents before children), and the zombies."""

    root: int
    procs: dict[int, FrozenProcess] = field(default_factory=dict)
    zombies: list[Zombie] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return list(self.procs)


@contextmanager
def freeze_tree(root: int, *, start_time: int | None = None) -> Iterator[FrozenTree]:
    """Freeze ``root`` and all its descendants for the ``with`` block; all are let go on leaving it.

    A child that exits while we reach it becomes a zombie entry; one that
    vanishes entirely (reaped by a parent ignoring SIGCHLD) is skipped.
    """
    tree = FrozenTree(root)
    with ExitStack() as stack:
        tree.procs[root] = stack.enter_context(freeze(root, start_time=start_time))
        queue = [root]
        while queue:
            parent = queue.pop(0)
            for child in children(parent):
                member = _freeze_child(stack, parent, child)
                if isinstance(member, Zombie):
                    tree.zombies.append(member)
                elif member is not None:
                    tree.procs[child] = member
                    queue.append(child)
        yield tree


#: What clone() may share between two processes (not threads), by kcmp type, that is not restored shared.
_SHARED_TABLES = {KCMP_VM: "address space (CLONE_VM: a vfork child that has not exec'ed yet?)",
                  KCMP_FS: "cwd and root (CLONE_FS)", KCMP_SIGHAND: "signal handlers (CLONE_SIGHAND)"}


def shared_tables(ftree: FrozenTree) -> set[int]:
    """The processes sharing their descriptor table with their parent (CLONE_FILES): restored that way.

    Unsupported if a process shares another kernel table with its parent
    (clone flags without CLONE_THREAD): restored apart, it would silently stop
    being shared.  Sharing starts at clone(), so each process is compared with
    its parent only.
    """
    out = set()
    for pid in ftree.procs:
        if pid == ftree.root:
            continue
        ppid = read_stat(pid).ppid
        if ppid not in ftree.procs:
            continue
        for kind, what in _SHARED_TABLES.items():
            if kcmp(ppid, pid, kind) == 0:
                raise Unsupported(f"process {pid} shares its {what} with its parent {ppid}: "
                                  "restoring that sharing is not supported yet")
        if kcmp(ppid, pid, KCMP_FILES) == 0:
            out.add(pid)
    return out


def _freeze_child(stack: ExitStack, parent: int, pid: int) -> FrozenProcess | Zombie | None:
    try:
        st = read_stat(pid)
    except TargetGone:
        return None
    if st.ppid != parent:
        return None  # reparented meanwhile: not ours
    if st.state not in ("Z", "X"):
        try:
            return stack.enter_context(freeze(pid, start_time=st.starttime))
        except TargetGone:
            try:
                st = read_stat(pid)
            except TargetGone:
                return None
            if st.state not in ("Z", "X"):
                raise
    return Zombie(pid, st.ppid, st.pgrp, st.session, st.starttime, st.exit_code, st.comm)


# --- restore ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """One process to create: its ids, and what to create below it."""

    pid: int
    pgid: int
    sid: int
    zombie: bool = False
    wait_status: int = 0
    comm: str = ""
    children: tuple["Plan", ...] = ()
    shares_files: bool = False  # created with CLONE_FILES: its parent's descriptor table

    def walk(self) -> Iterator["Plan"]:
        """This process and every descendant, parents first."""
        yield self
        for c in self.children:
            yield from c.walk()


def plan(processes: Sequence[ProcessInfo]) -> Plan:
    """The creation plan of an image's processes (root first); Unsupported for a tree ckpt cannot rebuild."""
    if not processes:
        raise RestoreError("the image lists no process")
    root = processes[0]
    below: dict[int, list[ProcessInfo]] = {}
    info = {p.pid: p for p in processes}
    for p in processes[1:]:
        if p.ppid not in info:
            raise RestoreError(f"process {p.pid} of the image has parent {p.ppid}, which the image does not have")
        below.setdefault(p.ppid, []).append(p)
        parent = info[p.ppid]
        if p.sid not in (p.pid, parent.sid):
            raise Unsupported(f"process {p.pid} is in session {p.sid}, neither its own nor its parent's "
                              f"({parent.sid}): recreating that session is not supported")

    def build(p: ProcessInfo) -> Plan:
        return Plan(p.pid, p.pgid, p.sid, p.zombie, p.wait_status, p.comm,
                    tuple(build(c) for c in sorted(below.get(p.pid, []), key=lambda c: c.pid)),
                    p.shares_files and p is not root)

    return build(root)


@dataclass
class RootHelper:
    """The root's helper made by :func:`create`, and what ends the tree's helpers if the restore does not finish.

    Nothing of a restore may outlive the restorer before the hand-over.  The
    helper blocks reading a pipe whose write end (``life``) only the restorer
    holds, and exits on EOF: so it ends with the restorer even before it is
    seized (once seized, PTRACE_O_EXITKILL ends it and every helper cloned
    from it).  ``detached``, its parent is ``mid``, an intermediate that stays
    until :meth:`hand_over` as a child subreaper: the helpers a failure
    orphans come to it, and on EOF (the restorer gave up or died) it kills
    the root and reaps them all.  In the foreground the restorer is the
    root's parent and, until then, a child subreaper itself (``subreaper``:
    its own setting before), to reap them without init's help.
    """

    pid: int
    life: int
    detached: bool
    #: The intermediate while it is ours to reap (foreground it leaves once the helper is made).
    mid: int = 0
    #: clone3 gave the root's pid: the helper exists, or existed, as a child of ours (foreground).
    made: bool = False
    subreaper: bool | None = None
    done: bool = False

    def hand_over(self) -> None:
        """The helpers are about to run as the image's processes: from now on they outlive us.

        ``detached``: the intermediate is killed first (on EOF it would kill
        the root), so the root is reparented like a daemon.
        """
        if self.done:
            return
        self.done = True
        try:
            if self.mid:
                if self.detached:
                    os.kill(self.mid, signal.SIGKILL)
                _end(self.mid)
                self.mid = 0
        finally:
            self._close()

    def reap(self, created: Sequence[int]) -> None:
        """After a failure, once ``created`` (parents first) are killed and the ones we trace collected: reap them all.

        The pids are free on return.  Closing ``life`` ends the root's helper
        if it is not seized yet; detached, the intermediate then kills the
        root and reaps every helper.  A process that does not end within
        :data:`CREATE_TIMEOUT` is killed.
        """
        if self.done:
            return
        self.done = True
        try:
            os.close(self.life)
            self.life = -1
            if self.mid:
                status = _end(self.mid)
                self.mid = 0
                if not self.detached:  # it leaves right after its clone3, with 0 if the clone was made
                    self.made = status == 0
            if not self.detached:
                for pid in created:  # parents first: each one's orphans came to us (a subreaper) as it ended
                    if pid != self.pid or self.made:
                        _end(pid)
        finally:
            self._close()

    def _close(self) -> None:
        if self.life >= 0:
            os.close(self.life)
            self.life = -1
        if self.subreaper is not None:
            _set_subreaper(self.subreaper)
            self.subreaper = None


def _end(pid: int) -> int | None:
    """Reap our child ``pid`` (SIGKILLed if not gone within :data:`CREATE_TIMEOUT`): its exit code, None if not ours."""
    deadline, delay = time.monotonic() + CREATE_TIMEOUT, 1e-4
    try:
        while (got := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)  # our child, alive or a zombie: not a reused pid
                got = os.waitpid(pid, 0)
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(got[1])


def _get_subreaper() -> bool:
    out = ctypes.c_int(0)
    syscall(NR.prctl, PR_GET_CHILD_SUBREAPER, ctypes.addressof(out), 0, 0, 0, name="prctl(PR_GET_CHILD_SUBREAPER)")
    return bool(out.value)


def _set_subreaper(on: bool) -> None:
    syscall(NR.prctl, PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0, name="prctl(PR_SET_CHILD_SUBREAPER)")


def create(root: Plan, *, detached: bool) -> RootHelper:
    """Create the root's helper (see the module doc and :class:`RootHelper`): alive, not seized yet.

    Not ``detached``: it is our child.  ``detached``: the child of an
    intermediate that goes at the hand-over, so it is reparented like a
    daemon.  On failure nothing is left and RestoreError says why.  Its
    descendants are cloned from it later (:func:`clone_helper`), once it is
    emptied.

    The helper is made by ``clone3(set_tid=[pid])`` in a child of
    ``os.fork()``, never here: a raw clone of a multi-threaded interpreter
    (the page filler's threads, the receiver's) runs no fork handler and can
    inherit a waiting thread's request for the GIL; its next bytecode then
    drops the GIL and waits for that thread to take it (CPython's drop_gil
    with FORCE_SWITCHING), which does not exist in the copy: for ever.
    ``os.fork()`` leaves its child single-threaded with a sound interpreter,
    and a clone of that runs Python safely.  Foreground, the clone is made
    with CLONE_PARENT: our child.
    """
    rfd, wfd = os.pipe()
    life_r, life_w = os.pipe()
    helper = RootHelper(root.pid, life_w, detached)
    try:
        try:
            if not detached:
                helper.subreaper = _get_subreaper()
                _set_subreaper(True)
            helper.mid = os.fork()
            if helper.mid == 0:
                _intermediate(root, detached, wfd, life_r)
        finally:
            os.close(wfd)
            os.close(life_r)
        err = _collect(rfd, root.pid)
        helper.made = err is None  # (foreground, the intermediate is reaped later: it is leaving)
    except BaseException:
        helper.reap([root.pid])
        raise
    finally:
        os.close(rfd)
    if err is not None:
        helper.reap([root.pid])
        raise RestoreError(_clone_failure(root.pid, err) if err else
                           f"the helper of pid {root.pid} ended before it reported")
    return helper


def _intermediate(root: Plan, detached: bool, wfd: int, life_r: int) -> NoReturn:
    """The child of ``os.fork()`` that clones the root's helper (see :func:`create`); never returns.

    It keeps only its two pipes, and terminal and stop signals are ignored
    (by the helper too): both end when the restorer does, not before.
    Foreground it leaves at once, with 0 once the helper is made.  Detached
    it stays the helper's parent, a child subreaper, until it is killed at
    the hand-over or reads EOF from ``life_r`` (the restorer gave up or
    died): then it kills the root and reaps every helper that comes to it.
    """
    code = 1
    try:
        close_all_but(wfd, life_r)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)
        if detached:
            _set_subreaper(True)
        try:
            pid = clone.clone3(0 if detached else clone.CLONE_PARENT, exit_signal=signal.SIGCHLD if detached else 0,
                               set_tid=[root.pid])
        except OSError as exc:
            os.write(wfd, _REPORT.pack(0, exc.errno or errno.EIO))
            raise
        if pid == 0:
            _helper(root, wfd, life_r)
        code = 0
        if detached:
            os.close(wfd)
            while os.read(life_r, 1):
                pass
            os.kill(pid, signal.SIGKILL)
            while True:
                os.waitpid(-1, 0)  # until ECHILD
    finally:
        os._exit(code)


def _clone_failure(pid: int, err: int | None) -> str:
    if err == errno.EEXIST:
        return f"pid {pid} is taken (clone3 set_tid: EEXIST)"
    if err == errno.EPERM:
        return f"clone3 with set_tid={pid} needs CAP_SYS_ADMIN (run as root)"
    return f"cannot create a process with pid {pid}: {os.strerror(err or 0)}"


def _helper(me: Plan, wfd: int, life_r: int) -> NoReturn:
    """The root helper's life before it is seized (a copy of the restorer): its ids, then wait for EOF."""
    try:
        try:
            if me.sid == me.pid:
                os.setsid()
            elif me.pgid == me.pid:
                os.setpgid(0, 0)
        except OSError as exc:
            os.write(wfd, _REPORT.pack(me.pid, exc.errno or errno.EIO))
            os._exit(1)
        os.write(wfd, _REPORT.pack(me.pid, 0))
        os.close(wfd)
        while os.read(life_r, 1):  # seized in this read; EOF: the restorer gave up or died
            pass
    finally:
        os._exit(0)


def _collect(rfd: int, pid: int) -> int | None:
    """The report of the root's helper, or of the intermediate if clone3 failed.

    None once the helper is ready, else the errno it failed with (0: no report came).
    """
    deadline = time.monotonic() + CREATE_TIMEOUT
    left = CREATE_TIMEOUT
    while left > 0 and not select.select([rfd], [], [], left)[0]:
        left = deadline - time.monotonic()
    if left <= 0:
        raise RestoreError(f"the helper of pid {pid} did not report within {CREATE_TIMEOUT:.0f} s")
    data = os.read(rfd, _REPORT.size)  # written whole (less than PIPE_BUF), or EOF
    if len(data) < _REPORT.size:
        return 0
    return _REPORT.unpack(data)[1] or None


def clone_helper(inj: Injector, scratch: Scratch, child: Plan) -> FrozenProcess:
    """Clone the helper of ``child`` from its parent's (``inj``: the parent's emptied main thread).

    An injected ``clone3(set_tid=[pid])``, fork-like (``CLONE_FILES`` if the
    table is shared), from a helper that holds nothing but the trampoline and
    the kernel's areas: cheap, and the copy needs no emptying.  The parent
    traces forks (PTRACE_O_TRACEFORK), so the child is ours from its first
    instruction on, held in its first stop; it then takes its session or
    group as :func:`_helper` does.  RestoreError if the pid is taken.
    """
    flags = clone.CLONE_FILES if child.shares_files else 0
    scratch.write(0, clone.clone_args_bytes(flags, exit_signal=signal.SIGCHLD, set_tid=[child.pid],
                                            at=scratch.addr))
    try:
        pid = inj.call(NR.clone3, scratch.addr, clone.CLONE_ARGS_SIZE_VER2, name=f"clone3(set_tid=[{child.pid}])")
    except OSError as exc:
        raise RestoreError(_clone_failure(child.pid, exc.errno)) from exc
    try:
        if pid != child.pid:  # not reachable with set_tid
            raise RestoreError(f"clone3 gave pid {pid}, wanted {child.pid}")
        st = ptrace.waitpid(pid)
        if st is None or st.kind is not StopKind.EVENT_STOP:
            raise RestoreError(f"the helper of pid {pid} did not stop as expected: {st}")
        proc = FrozenProcess.adopt(pid, st, inj.thread)
        cinj = Injector(proc.threads[pid], syscall_insn=inj.syscall_insn)
        try:
            if child.sid == child.pid:
                cinj.call(NR.setsid)
            elif child.pgid == child.pid:
                cinj.call(NR.setpgid, 0, 0)
        except OSError as exc:
            raise RestoreError(f"the helper of pid {pid} cannot take its session or group: "
                               f"{os.strerror(exc.errno or 0)}") from exc
    except BaseException:
        discard(pid)
        raise
    return proc


def strays(root: Plan, created: Sequence[int]) -> list[int]:
    """Helpers cloned but not in ``created``: a failure struck between the clone and its record.

    A process with a pid of the plan whose parent is one of ``created`` can
    only be one: a helper forks only when we make it.
    """
    made, out = set(created), []
    for p in root.walk():
        if p.pid in made:
            continue
        try:
            ppid = read_stat(p.pid).ppid
        except TargetGone:
            continue
        if ppid in made:
            out.append(p.pid)
            made.add(p.pid)
    return out


def discard(pid: int) -> None:
    """Kill a helper we trace and collect it (its parent, killed with the tree, then gets it)."""
    try:
        os.kill(pid, signal.SIGKILL)
        while not (st := ptrace.waitpid(pid)) or not st.gone:
            pass
    except OSError:
        pass  # gone and collected already


def _join_group(inj: Injector, me: Plan) -> None:
    """A zombie's helper joins the group it was in when that is neither its own nor its parent's (a sibling's,
    which exists: every sibling is made before a zombie ends); RestoreError if the group is not there."""
    pgrp = read_stat(me.pid).pgrp  # its own or its parent's (clone_helper)
    if me.pgid == pgrp:
        return
    try:
        inj.call(NR.setpgid, 0, me.pgid, name=f"setpgid(0, {me.pgid})")
    except OSError as exc:
        raise RestoreError(f"zombie {me.pid} cannot be put back into process group {me.pgid} (session {me.sid}): "
                           f"{os.strerror(exc.errno or 0)}; no process made before it leads or is in that group"
                           ) from exc


def end_as_zombie(parent: Injector, scratch: Scratch, proc: FrozenProcess, me: Plan) -> None:
    """Let a zombie's freshly cloned helper (``proc``) end with its recorded wait status, unreaped.

    It takes its name and its process group, then runs one more syscall from the trampoline as we
    let it go: ``exit_group(code)``, or ``kill(self, sig)`` with the signal's
    default action and no core file.  The SIGCHLD its end sends the parent
    is taken back (``rt_sigtimedwait`` in the parent, which blocks every
    signal from now on, as a helper being restored does anyway): the restored
    parent gets only the signals of its image.
    """
    pid, ptid = proc.pid, parent.tid
    t = proc.threads[pid]
    insn = parent.syscall_insn
    inj = Injector(t, syscall_insn=insn)
    if me.comm:  # the child's own copy of the scratch area, at the same address
        proc.mem.write(scratch.addr, me.comm.encode()[:15] + b"\0")
        inj.call(NR.prctl, PR_SET_NAME, scratch.addr, 0, 0, 0, name="prctl(PR_SET_NAME)")
    _join_group(inj, me)
    regs = t.snapshot.regs
    regs.rip, regs.orig_rax = insn, (1 << 64) - 1
    status = me.wait_status
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            proc.mem.write(scratch.addr, bytes(_SIGACTION_SIZE))  # SIG_DFL, no flags, empty mask
            inj.call(NR.rt_sigaction, sig, scratch.addr, 0, 8, name=f"rt_sigaction({sig}, SIG_DFL)")
        resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))  # no core file for a re-enactment
        ptrace.setsigmask(pid, 0)
        regs.rax, regs.rdi, regs.rsi = NR.kill, pid, sig
    else:
        regs.rax, regs.rdi = NR.exit_group, os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:  # inherited from us: the zombie would be reaped
        scratch.write(0, bytes(_SIGACTION_SIZE))
        parent.call(NR.rt_sigaction, signal.SIGCHLD, scratch.addr, 0, 8, name="rt_sigaction(SIGCHLD, SIG_DFL)")
    ptrace.setsigmask(ptid, _ALL_SIGNALS)
    t.unpin()
    ptrace.setregs(pid, regs)
    ptrace.detach(pid, 0)
    t.gone, proc.released = True, True
    proc.mem.close()
    proc._mem = None
    # Wait for its SIGCHLD (which also says that it has ended) and take it out of the parent's queue.
    scratch.write(0, struct.pack("<Qqq", 1 << (signal.SIGCHLD - 1), int(CREATE_TIMEOUT), 0))
    try:
        parent.call(NR.rt_sigtimedwait, scratch.addr, 0, scratch.addr + 8, 8, name="rt_sigtimedwait(SIGCHLD)")
    except OSError as exc:
        raise RestoreError(f"the helper of zombie {pid} did not end: {os.strerror(exc.errno or 0)}") from exc


def kill(pids: Sequence[int]) -> None:
    """SIGKILL the helpers of a tree (children first); the ones already gone are skipped."""
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill(created: Sequence[int], root: int, *, ours: bool) -> None:
    """SIGKILL every created helper (children first) and reap the root if it is our child."""
    kill(created)
    if ours and root in created:
        try:
            os.waitpid(root, 0)
        except ChildProcessError:
            pass
