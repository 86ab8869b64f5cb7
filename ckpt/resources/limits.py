"""Process attributes: rlimits, umask, cwd, root, comm, personality, oom_score_adj, prctl flags, session and
process group; and per thread the scheduling state (nice, policy, CPU affinity).

Everything is restored *as far as the kernel allows* and what could not be is
returned as a list of warnings instead of failing the restore: raising a hard
rlimit needs CAP_SYS_RESOURCE (root lacks it here, DESIGN §4), lowering
oom_score_adj below the inherited minimum needs it too, a CPU may not exist
on this machine, and a session or process group of another process can only
be joined if that group exists in our session.  Paths (cwd, root) that are
gone are errors: the program would run in the wrong place.  A cwd or root that
was deleted (``/proc/PID/cwd`` says "PATH (deleted)") is made again, empty as
it was, entered and removed (:mod:`ckpt.resources.ghost`).

Dump reads /proc and injects only what /proc does not show (rlimits — from
outside prlimit64 needs matching uids or CAP_SYS_RESOURCE —, personality,
prctl flags).  Restore injects everything, in this order:

* ``chdir`` before ``chroot`` (the recorded cwd is a path in *our* root);
* rlimits after files and memory are in place (a lowered RLIMIT_NOFILE or
  RLIMIT_AS would stop them) and before credentials (raising needs privilege);
* sessions: a session leader gets ``setsid()``, a group leader
  ``setpgid(0, 0)``, a member ``setpgid(0, pgid)`` when that group exists in
  the helper's session; otherwise a warning (a whole tree restored under one
  restorer keeps its sessions only when their leaders are restored first).
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..control.inject import OUT, Injector, Query, Scratch
from ..control.seize import FrozenProcess
from ..errors import RestoreError
from ..image.pb import core_pb2, process_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.prctl import (
    PR_GET_CHILD_SUBREAPER, PR_GET_DUMPABLE, PR_GET_PDEATHSIG, PR_GET_THP_DISABLE, PR_SET_CHILD_SUBREAPER,
    PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_PDEATHSIG, PR_SET_THP_DISABLE, TASK_COMM_LEN,
)
from ..kernel.resource import PRIO_PROCESS, RLIM_INFINITY, RLIM_NLIMITS, RLIMIT_NAMES, rlimit64
from ..procfs.limits import read_limits
from ..kernel.sched import SCHED_RESET_ON_FORK, sched_getaffinity
from ..procfs.snapshot import Snapshot
from ..procfs.stat import read_stat
from ..procfs.status import read_status_values
from . import ghost
from ._scratch import scratch_for

__all__ = [
    "PERSONALITY_QUERY", "dump", "dump_rlimits", "dump_sched", "restore", "restore_rlimits", "restore_sched",
    "restore_session",
]

#: personality(0xffffffff) only reports the current persona.
PERSONALITY_QUERY = 0xFFFFFFFF
_RL_SIZE = ctypes.sizeof(rlimit64)


def _fmt(v: int) -> str:
    return "unlimited" if v == RLIM_INFINITY else str(v)


# --- dump ---

def dump_rlimits(proc: FrozenProcess, *, scratch: Scratch | None = None) -> list[process_pb2.Rlimit]:
    """Every resource limit, in RLIMIT_* order, from /proc/PID/limits (16 injected prlimit64 cost ~1 ms)."""
    return [process_pb2.Rlimit(resource=r, name=RLIMIT_NAMES[r], cur=cur, max=max_)
            for r, (cur, max_) in enumerate(read_limits(proc.pid)[:RLIM_NLIMITS])]


def _read_personality(pid: int) -> int:
    """/proc/PID/personality (hex), read from outside: the injected query costs a ptrace round trip."""
    with open(f"/proc/{pid}/personality", "rb") as f:
        return int(f.read(), 16)


def _read_oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj", "rb") as f:
        return int(f.read())


DUMPABLE = Query("prctl(PR_GET_DUMPABLE)", NR.prctl, (PR_GET_DUMPABLE, 0, 0, 0, 0))
THP_DISABLE = Query("prctl(PR_GET_THP_DISABLE)", NR.prctl, (PR_GET_THP_DISABLE, 0, 0, 0, 0))
CHILD_SUBREAPER = Query("prctl(PR_GET_CHILD_SUBREAPER)", NR.prctl, (PR_GET_CHILD_SUBREAPER, OUT, 0, 0, 0), out=4)
PDEATHSIG = Query("prctl(PR_GET_PDEATHSIG)", NR.prctl, (PR_GET_PDEATHSIG, OUT, 0, 0, 0), out=4)
#: What :func:`dump` asks the process (a dump may ask them of a whole tree at once: inject.ask_all).
QUERIES = (DUMPABLE, THP_DISABLE, CHILD_SUBREAPER, PDEATHSIG)


def dump(proc: FrozenProcess, snap: Snapshot, *, scratch: Scratch | None = None) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment: ids, comm, rlimits, umask, cwd, root, personality, oom_score_adj, prctl flags."""
    st = snap.stat
    inj = proc.injector()
    cwd = snap.readlink("cwd")
    root = snap.readlink("root")
    cwd_ghost, root_ghost = ghost.dump_dir(proc.pid, "cwd", cwd), ghost.dump_dir(proc.pid, "root", root)
    cwd, root = (ghost.name_of(cwd) if cwd_ghost else cwd), (ghost.name_of(root) if root_ghost else root)
    entry = process_pb2.ProcessEntry(
        pid=proc.pid, ppid=st.ppid, pgid=st.pgrp, sid=st.session, comm=st.comm, start_time=st.starttime,
        exit_signal=st.exit_signal, umask=snap.status.umask or 0, cwd=cwd, root=root,
        personality=_read_personality(proc.pid),
        oom_score_adj=_read_oom_score_adj(proc.pid),
    )
    if cwd_ghost is not None:
        entry.cwd_ghost.CopyFrom(cwd_ghost)
    if root_ghost is not None:
        entry.root_ghost.CopyFrom(root_ghost)
    entry.rlimits.extend(dump_rlimits(proc, scratch=scratch))
    f = entry.flags
    f.dumpable = inj.ask(DUMPABLE)[0]
    f.thp_disabled = bool(inj.ask(THP_DISABLE)[0])
    with scratch_for(inj, scratch, 8) as s:
        f.child_subreaper = bool(int.from_bytes(inj.ask(CHILD_SUBREAPER, s)[1], "little"))
        f.pdeath_signal = int.from_bytes(inj.ask(PDEATHSIG, s)[1], "little", signed=True)
    return entry


def dump_sched(tid: int) -> core_pb2.SchedState:
    """Scheduling state of one thread, read from outside (the threads module stores it per thread)."""
    policy = os.sched_getscheduler(tid)
    return core_pb2.SchedState(
        policy=policy & ~SCHED_RESET_ON_FORK, nice=os.getpriority(os.PRIO_PROCESS, tid),
        rt_priority=os.sched_getparam(tid).sched_priority, cpu_affinity=sched_getaffinity(tid),
        reset_on_fork=bool(policy & SCHED_RESET_ON_FORK),
    )


# --- restore ---

def restore(inj: Injector, entry: process_pb2.ProcessEntry, *, scratch: Scratch | None = None,
            lower_limits: list[int] | None = None, ghosts: ghost.GhostObjects | None = None) -> list[str]:
    """Restore the attributes of ``entry`` into the process of ``inj``; returns warnings for what could not be.

    ``lower_limits``: a hard limit that cannot be raised here is lowered (its resource appended to the
    list, with a warning) instead of failing the restore (``--allow-lower-limits``).  ``ghosts``: the
    restore's deleted directories (a deleted cwd or root is made there; without it, here)."""
    if ghosts is not None:
        return _restore(inj, entry, scratch, lower_limits, ghosts)
    own = ghost.GhostObjects()
    try:
        warnings = _restore(inj, entry, scratch, lower_limits, own)
        own.finish()
        return warnings
    finally:
        own.close()


def _restore(inj: Injector, entry: process_pb2.ProcessEntry, scratch: Scratch | None,
             lower_limits: list[int] | None, ghosts: ghost.GhostObjects) -> list[str]:
    warnings: list[str] = []
    with scratch_for(inj, scratch, 4096) as s:
        if entry.cwd:
            cwd = ghosts.path(entry.cwd_ghost, entry.cwd) if entry.HasField("cwd_ghost") else entry.cwd
            _call_path(inj, s, NR.chdir, cwd, "working directory")
        if entry.root and (entry.root != "/" or entry.HasField("root_ghost")):
            root = ghosts.path(entry.root_ghost, entry.root) if entry.HasField("root_ghost") else entry.root
            _call_path(inj, s, NR.chroot, root, "root directory")
        if int(read_status_values(inj.pid, "Umask")[0], 8) != entry.umask & 0o777:  # the helper has the restorer's
            inj.call(NR.umask, entry.umask & 0o777, name=f"umask({entry.umask:o})")
        comm = entry.comm.encode(errors="surrogateescape")[:TASK_COMM_LEN - 1]
        s.write(0, comm + b"\0")
        inj.call(NR.prctl, PR_SET_NAME, s.addr, 0, 0, 0, name=f"prctl(PR_SET_NAME, {entry.comm!r})")
        try:
            if _read_personality(inj.pid) != entry.personality:
                inj.call(NR.personality, entry.personality, name=f"personality({entry.personality:#x})")
        except OSError as exc:
            warnings.append(f"personality {entry.personality:#x} not set: {exc.strerror}")
        warnings += _restore_flags(inj, entry.flags)
        warnings += restore_rlimits(inj, entry.rlimits, scratch=s, lowered=lower_limits)
    warnings += _restore_oom_score_adj(inj.pid, entry.oom_score_adj)
    warnings += restore_session(inj, entry)
    return warnings


def _call_path(inj: Injector, s: Scratch, nr: int, path: str, what: str) -> None:
    raw = os.fsencode(path) + b"\0"
    if len(raw) > s.size:
        raise RestoreError(f"{what} {path!r}: path longer than {s.size} bytes")
    s.write(0, raw)
    try:
        inj.call(nr, s.addr, name=f"{NR(nr).name}({path!r})")
    except OSError as exc:
        raise RestoreError(f"cannot enter the {what} {path!r} of the image: {exc.strerror}",
                           hint="the directory must exist where it was when the process was dumped") from exc


def _restore_flags(inj: Injector, f: process_pb2.ProcessFlags) -> list[str]:
    out = []
    for option, value, what in ((PR_SET_DUMPABLE, f.dumpable, "PR_SET_DUMPABLE"),
                                (PR_SET_CHILD_SUBREAPER, int(f.child_subreaper), "PR_SET_CHILD_SUBREAPER"),
                                (PR_SET_PDEATHSIG, f.pdeath_signal, "PR_SET_PDEATHSIG"),
                                (PR_SET_THP_DISABLE, int(f.thp_disabled), "PR_SET_THP_DISABLE")):
        if option in (PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG) and not value:
            continue  # what every fresh helper has: fork clears both (one injected call less each)
        if option == PR_SET_DUMPABLE and value not in (0, 1):
            value = 1  # SUID_DUMP_ROOT (2) cannot be set by prctl
        try:
            inj.call(NR.prctl, option, value, 0, 0, 0, name=f"prctl({what}, {value})")
        except OSError as exc:
            out.append(f"prctl({what}, {value}) failed: {exc.strerror}")
    return out


def restore_rlimits(inj: Injector, rlimits: "list[process_pb2.Rlimit] | object",
                    *, scratch: Scratch | None = None, lowered: list[int] | None = None) -> list[str]:
    """Set each limit.  A hard limit that cannot be raised here (it needs CAP_SYS_RESOURCE) fails the restore,
    unless ``lowered`` is given: then today's hard limit is kept, the resource appended to it, and a warning
    returned."""
    warnings = []
    with scratch_for(inj, scratch, RLIM_NLIMITS * _RL_SIZE) as s:
        current = read_limits(inj.pid)
        for rl in rlimits:  # type: ignore[attr-defined]
            if not 0 <= rl.resource < RLIM_NLIMITS:
                warnings.append(f"rlimit {rl.resource} ({rl.name}) is unknown to this kernel: not restored")
                continue
            name = RLIMIT_NAMES[rl.resource]
            if (rl.cur, rl.max) == current[rl.resource]:
                continue
            s.write(0, bytes(rlimit64(rl.cur, rl.max)))
            try:
                inj.call(NR.prlimit64, 0, rl.resource, s.addr, 0, name=f"prlimit64(RLIMIT_{name})")
                continue
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise RestoreError(f"RLIMIT_{name} {_fmt(rl.cur)}/{_fmt(rl.max)}: {exc.strerror}") from exc
            hard = current[rl.resource][1]  # raising the hard limit needs CAP_SYS_RESOURCE
            if lowered is None:
                raise RestoreError(f"RLIMIT_{name}: the hard limit {_fmt(rl.max)} cannot be raised from {_fmt(hard)} "
                                   "here (it needs CAP_SYS_RESOURCE)",
                                   hint="--allow-lower-limits restores it with the lower limit, and says so")
            lowered.append(rl.resource)
            soft = min(rl.cur, hard)
            s.write(0, bytes(rlimit64(soft, hard)))
            inj.call(NR.prlimit64, 0, rl.resource, s.addr, 0, name=f"prlimit64(RLIMIT_{name})")
            warnings.append(f"RLIMIT_{name}: hard limit {_fmt(rl.max)} could not be raised from {_fmt(hard)} "
                            f"(needs CAP_SYS_RESOURCE); set to {_fmt(soft)}/{_fmt(hard)}")
    return warnings


def _restore_oom_score_adj(pid: int, value: int) -> list[str]:
    """Written from outside: the writer's CAP_SYS_RESOURCE decides whether it may go below the inherited minimum."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        return [f"oom_score_adj {value} not set ({exc.strerror}); it stays {_read_oom_score_adj(pid)}"]
    return []


def restore_session(inj: Injector, entry: process_pb2.ProcessEntry) -> list[str]:
    """Session and process group, by relation to the dumped pid (see the module doc)."""
    me = read_stat(inj.pid)
    pid = inj.pid
    if entry.sid == entry.pid:  # a session leader (and so a group leader)
        if me.session == pid:
            return []
        try:
            inj.call(NR.setsid, name="setsid()")
        except OSError as exc:
            return [f"setsid() failed ({exc.strerror}): the process is not a session leader as it was"]
        return []
    if entry.pgid == entry.pid:  # a group leader inside someone else's session
        if me.pgrp == pid:
            return []
        try:
            inj.call(NR.setpgid, 0, 0, name="setpgid(0, 0)")
        except OSError as exc:
            return [f"setpgid(0, 0) failed ({exc.strerror}): the process does not lead a group as it did"]
        return []
    if me.pgrp == entry.pgid:
        return []
    try:
        inj.call(NR.setpgid, 0, entry.pgid, name=f"setpgid(0, {entry.pgid})")
    except OSError as exc:
        return [f"process group {entry.pgid} (session {entry.sid}) not joined ({exc.strerror}); "
                f"the process stays in group {me.pgrp} of session {me.session}"]
    return []


def restore_sched(inj: Injector, sched: core_pb2.SchedState, *, scratch: Scratch | None = None) -> list[str]:
    """Nice value, policy and CPU affinity of the injector's thread; warnings for what the kernel refused.

    Each is injected only where the thread (read from outside) has another value: the
    helper is a copy of the restorer, which mostly runs with the image's nice value and mask.
    """
    warnings = []
    tid = inj.tid
    if os.getpriority(os.PRIO_PROCESS, tid) != sched.nice:
        try:
            inj.call(NR.setpriority, PRIO_PROCESS, 0, sched.nice & 0xFFFFFFFF, name=f"setpriority({sched.nice})")
        except OSError as exc:
            warnings.append(f"thread {tid}: nice {sched.nice} not set: {exc.strerror}")
    with scratch_for(inj, scratch, max(len(sched.cpu_affinity), 8)) as s:
        policy = sched.policy | (SCHED_RESET_ON_FORK if sched.reset_on_fork else 0)
        s.write(0, sched.rt_priority.to_bytes(4, "little"))
        current = os.sched_getscheduler(tid)
        if policy != current or os.sched_getparam(tid).sched_priority != sched.rt_priority:
            try:
                inj.call(NR.sched_setscheduler, 0, policy, s.addr, name=f"sched_setscheduler({policy})")
            except OSError as exc:
                warnings.append(f"thread {tid}: policy {sched.policy}/{sched.rt_priority} not set: {exc.strerror}")
        mask = bytes(sched.cpu_affinity)
        cpus = {i for i in range(len(mask) * 8) if mask[i // 8] >> (i % 8) & 1}
        if cpus and cpus != inj.thread.affinity:
            s.write(0, mask)
            try:
                inj.call(NR.sched_setaffinity, 0, len(mask), s.addr, name="sched_setaffinity")
                inj.thread.drop_pin()  # its own mask now: later calls pin it again and put this one back
            except OSError as exc:
                warnings.append(f"thread {tid}: CPU affinity {sorted(cpus)} not set ({exc.strerror}): "
                                "no such CPU here?")
    return warnings
