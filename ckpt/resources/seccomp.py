"""seccomp: each thread's mode (strict or filter) and its chain of filter programs.

Dump.  ckpt seizes every thread with PTRACE_O_SUSPEND_SECCOMP
(:func:`ckpt.control.seize.seize_options`), so the calls it injects pass by the
target's filters and strict mode; without it a strict-mode target would be
killed by the first one and a filter could answer them with an error.  Each
thread's mode is the ``Seccomp:`` line of its status; its filters are read with
PTRACE_SECCOMP_GET_FILTER (index 0 is the *oldest*: the kernel counts back
from the newest by the chain's length less the index, measured here) and their kept flags
(SECCOMP_FILTER_FLAG_LOG) with PTRACE_SECCOMP_GET_METADATA.

Which filters are shared.  The kernel shares a filter between the threads
made after it was installed (and with TSYNC), and between a process and the
children it forked since, but tells no one: kcmp has no type for a filter.
So a filter is taken as shared by content and place: two chains share their
filters from the oldest on for as long as the programs and flags are equal,
in the same order (the image keeps them as one tree, :class:`Chains`).  Two
threads that installed equal programs each on its own look the same to
everything the kernel shows (status, the programs, what each call returns);
the one difference is that a later TSYNC of theirs succeeds after the restore
where it would have failed before (their chains are one now).  Across
processes nothing is shared at restore: each process installs its own chain
(a fork's copy is a copy of the same programs in the same order, which is
what status and PTRACE_SECCOMP_GET_FILTER show).

Refused: a filter that can answer SECCOMP_RET_USER_NOTIF (its listener, from
SECCOMP_FILTER_FLAG_NEW_LISTENER, is a descriptor of some supervisor that
cannot be handed a new one), and one whose action is computed (BPF_RET|BPF_A),
which could be that.

Restore.  Still under PTRACE_O_SUSPEND_SECCOMP, every thread gets its mode
back after everything else the restore does in it (PROCESS_RESTORERS ends
with it; the release's last injected calls pass by it as the dump's do): the
filters every thread of the process shares go in from the main thread with
SECCOMP_FILTER_FLAG_TSYNC (one filter for all, as the kernel had it), the
rest thread by thread, oldest first; then strict mode.  Installing a filter
takes no_new_privs or CAP_SYS_ADMIN: a process with neither among its final
credentials gets its filters just before its credentials are set.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..control.inject import Injector, Scratch
from ..control.seize import FrozenProcess, suspend_granted
from ..errors import RestoreError, Unsupported
from ..image.pb import process_pb2
from ..kernel import ptrace
from ..kernel.arch_x86_64 import NR
from ..kernel.seccomp import (
    SECCOMP_FILTER_FLAG_TSYNC, SECCOMP_MODE_FILTER, SECCOMP_MODE_STRICT, SECCOMP_RET_ACTION_FULL,
    SECCOMP_RET_USER_NOTIF, SECCOMP_SET_MODE_FILTER, SECCOMP_SET_MODE_STRICT, SOCK_FILTER_SIZE, returns,
    sock_fprog,
)
from ..procfs.snapshot import Snapshot
from ._scratch import scratch_for

__all__ = ["Chains", "read_chain", "dump", "restore", "early", "observed_lines"]

_CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Filter:
    """One filter as installed: its program (``struct sock_filter`` array) and the flags the kernel keeps."""

    program: bytes
    flags: int


def thread_mode(snap: Snapshot, tid: int) -> int:
    """The ``Seccomp:`` line of the thread's status (0 on a kernel without CONFIG_SECCOMP)."""
    try:
        return int(snap.task_status_values(tid, "Seccomp")[0])
    except ValueError:
        return 0


def read_chain(tid: int) -> list[Filter]:
    """The filters of a thread traced and stopped by us, oldest first."""
    out = []
    index = 0
    while True:
        try:
            program = ptrace.seccomp_get_filter(tid, index)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # past the oldest
                break
            raise
        try:
            flags = ptrace.seccomp_get_metadata(tid, index)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EINVAL):  # a kernel before 4.16
                raise
            flags = 0
        out.append(Filter(program, flags))
        index += 1
    return out


def _refuse(pid: int, tid: int, depth: int, f: Filter) -> None:
    """A filter whose listener cannot come back (module doc)."""
    for constant, value in returns(f.program):
        what = None
        if not constant:
            what = "returns an action it computes (BPF_RET|BPF_A), which may be SECCOMP_RET_USER_NOTIF"
        elif value & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF:
            what = "answers with SECCOMP_RET_USER_NOTIF"
        if what:
            raise Unsupported(f"thread {tid} of process {pid}: its seccomp filter {depth} (0 the oldest) {what}: "
                              "a user-notification filter's listener (SECCOMP_FILTER_FLAG_NEW_LISTENER) is a "
                              "supervisor's descriptor that ckpt cannot give a new one")


class Chains:
    """Thread chains as one tree of filters (shared from the oldest on while equal: the module doc)."""

    def __init__(self) -> None:
        self.msg = process_pb2.Seccomp()
        self._nodes: dict[tuple[int, bytes, int], int] = {}

    def add(self, tid: int, mode: int, chain: Sequence[Filter]) -> None:
        parent = 0
        for f in chain:
            key = (parent, f.program, f.flags)
            if key not in self._nodes:
                self.msg.filters.append(process_pb2.SeccompFilter(program=f.program, flags=f.flags, parent=parent))
                self._nodes[key] = len(self.msg.filters)
            parent = self._nodes[key]
        self.msg.threads.append(process_pb2.ThreadSeccomp(tid=tid, mode=mode, filter=parent))


def chain_of(msg: process_pb2.Seccomp, t: process_pb2.ThreadSeccomp) -> list[int]:
    """Indexes (1-based) of a thread's filters, oldest first; checked against a hostile image's loops."""
    out: list[int] = []
    at = t.filter
    while at:
        if at > len(msg.filters) or len(out) > len(msg.filters):
            raise RestoreError(f"seccomp: thread {t.tid}'s filter chain is broken in the image")
        out.append(at)
        at = msg.filters[at - 1].parent
    out.reverse()
    return out


def dump(proc: FrozenProcess, snap: Snapshot) -> process_pb2.ProcessEntry:
    """A ProcessEntry fragment with ``seccomp`` when a thread of the frozen process is under seccomp."""
    chains = Chains()
    for tid in sorted(proc.threads):
        mode = thread_mode(snap, tid)
        if mode == 0:
            continue
        if mode not in (SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER):
            raise Unsupported(f"thread {tid} of process {proc.pid} is in seccomp mode {mode}, which ckpt does not know")
        chain = read_chain(tid) if mode == SECCOMP_MODE_FILTER else []
        for depth, f in enumerate(chain):
            _refuse(proc.pid, tid, depth, f)
        chains.add(tid, mode, chain)
    entry = process_pb2.ProcessEntry()
    if chains.msg.threads:
        entry.seccomp.CopyFrom(chains.msg)
    return entry


def early(entry: process_pb2.ProcessEntry) -> bool:
    """Its filters must go in before its credentials: with these, it could not install them (module doc)."""
    return not entry.flags.no_new_privs and not entry.creds.cap_effective >> _CAP_SYS_ADMIN & 1


def _install(inj: Injector, s: Scratch, f: process_pb2.SeccompFilter, flags: int) -> None:
    n = len(f.program) // SOCK_FILTER_SIZE
    s.write(0, bytes(sock_fprog(n, s.addr + 16)) + f.program)
    res = inj.call(NR.seccomp, SECCOMP_SET_MODE_FILTER, f.flags | flags, s.addr,
                   name=f"seccomp(SECCOMP_SET_MODE_FILTER, {f.flags | flags:#x}, {n} instructions)")
    if res:  # TSYNC: the thread that could not follow
        raise RestoreError(f"seccomp: thread {res} of process {inj.pid} could not take the filter shared by its "
                           "threads (SECCOMP_FILTER_FLAG_TSYNC)")


def restore(inj: Injector, injectors: dict[int, Injector], s: Scratch, entry: process_pb2.ProcessEntry, *,
            filters: bool = True, strict: bool = True) -> None:
    """Put the image's seccomp state in the threads of ``injectors`` (``inj``: the main thread's).

    ``filters``/``strict``: which of the two to do now (strict mode goes last of all).
    """
    if not entry.HasField("seccomp"):
        return
    msg = entry.seccomp
    if not suspend_granted():
        raise RestoreError(f"process {inj.pid} ran under seccomp, and the kernel refused ckpt "
                           "PTRACE_O_SUSPEND_SECCOMP: the restore's last calls would meet its filters",
                           hint="restore as root with CAP_SYS_ADMIN, outside any seccomp sandbox")
    by_tid = {t.tid: t for t in msg.threads}
    strangers = sorted(set(by_tid) - set(injectors))
    if strangers:
        raise RestoreError(f"seccomp: the image names threads {strangers} that process {inj.pid} does not have")
    if filters:
        need = max((len(f.program) for f in msg.filters), default=0) + 16
        with scratch_for(inj, s, need) as area:
            _install_chains(inj, injectors, area, msg, by_tid)
    if strict:
        for t in msg.threads:
            if t.mode == SECCOMP_MODE_STRICT:
                injectors[t.tid].call(NR.seccomp, SECCOMP_SET_MODE_STRICT, 0, 0,
                                      name="seccomp(SECCOMP_SET_MODE_STRICT)")


def _install_chains(inj: Injector, injectors: dict[int, Injector], s: Scratch, msg: process_pb2.Seccomp,
                    by_tid: dict[int, process_pb2.ThreadSeccomp]) -> None:
    """The filters every thread has with TSYNC from the main thread, then each thread's own, oldest first."""
    chains = {tid: chain_of(msg, by_tid[tid]) if tid in by_tid else [] for tid in injectors}
    common: list[int] = []
    for level in zip(*chains.values()):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    for at in common:  # every thread has these: one filter for all, as the kernel had it
        _install(inj, s, msg.filters[at - 1], SECCOMP_FILTER_FLAG_TSYNC if len(injectors) > 1 else 0)
    for tid, chain in chains.items():
        for at in chain[len(common):]:
            _install(injectors[tid], s, msg.filters[at - 1], 0)


def observed_lines(tid: int) -> list[tuple[str, str]]:
    """The self-check's account of a thread in filter mode (traced and stopped by us): a digest of each
    filter's program and flags, oldest first (as PTRACE_SECCOMP_GET_FILTER numbers them)."""
    lines = []
    for depth, f in enumerate(read_chain(tid)):
        digest = hashlib.sha256(f.program).hexdigest()[:32]
        lines.append((f"filter {depth}", f"{len(f.program) // SOCK_FILTER_SIZE} insns flags={f.flags:#x} {digest}"))
    return lines
