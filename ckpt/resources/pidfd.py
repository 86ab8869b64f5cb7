"""pidfds (pidfd_open, clone's CLONE_PIDFD): a descriptor naming a process, reopened for the same pid.

fdinfo names the process: ``Pid:`` (and ``NSpid:``), ``-1`` once it has been
reaped.  A restore gives every process its old pid, so a pidfd of a process of
the tree is made again with ``pidfd_open`` of that pid, injected into the
holder while its descriptors are restored (no permission is needed to open a
pidfd, and the holder's credentials are still the restorer's then).  That
runs before the whole tree exists: the helpers are built parents first, each
one's children made before its descriptors.  So the pids that exist when a
holder's descriptors are made are its own, its ancestors', and their children
(zombies included): a pidfd of any of them is restored; one of another process
of the tree (a grandchild, a later sibling's child) or of a thread other than
a leader (PIDFD_THREAD: threads are made after the descriptors) is refused at
dump, naming it, as is a pidfd of a live process outside the tree (a restore
could not name the same process).

A pidfd whose process is gone and reaped (``Pid: -1``) cannot name its pid
again — that pid may belong to anyone by now.  It is made again as what it is:
a pidfd of a reaped process.  The restorer starts a short-lived child
(``true``), opens a pidfd of it, reaps it, and hands the pidfd to the holder
(``pidfd_getfd`` of the restorer, injected): it polls readable, waitid gives
ECHILD and a signal ESRCH, as the dumped one did.

Status flags: PIDFD_NONBLOCK is the open file's O_NONBLOCK, PIDFD_THREAD its
O_EXCL; both are passed to ``pidfd_open`` again.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Collection

from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..kernel.pidfd import PIDFD_NONBLOCK, PIDFD_THREAD, pidfd_open
from .fdkind import FdDump, FdKind, Opener, anon
from ..procfs.stat import read_stat
from ..procfs.status import read_status_values

__all__ = ["LINK", "DEAD", "KIND", "dump", "unreachable", "tgid", "restore"]

#: readlink of a pidfd's /proc/PID/fd/N.
LINK = "anon_inode:[pidfd]"
#: ``Pid:`` of a pidfd whose process has been reaped.
DEAD = -1
_OPEN_FLAGS = PIDFD_NONBLOCK | PIDFD_THREAD


def _parent(pid: int) -> int | None:
    try:
        return read_stat(pid).ppid
    except Exception:  # noqa: BLE001 - gone, or no process: no parent to tell
        return None


def tgid(tid: int) -> int:
    """The process of thread ``tid`` (itself if it is gone)."""
    try:
        return int(read_status_values(tid, "Tgid")[0])
    except Exception:  # noqa: BLE001 - gone: no thread group to tell
        return tid


def _refused(holder: int, fd: int, why: str) -> Unsupported:
    return Unsupported(f"process {holder}: fd {fd} is a pidfd of {why}, which ckpt cannot restore",
                       hint="ckpt restores a pidfd of the process itself, of its ancestors and of their children "
                            "(the pids that exist when its descriptors are made), and of a reaped process")


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Record the pid the pidfd names; Unsupported for a process the restore could not open it of (held only
    in flight, only a reaped process's pidfd is kept)."""
    holder, fd, tree = d.pid, d.fd, d.opts.tree
    target = d.info.pidfd_pid
    if target is None:
        raise _refused(holder, fd, "a process fdinfo does not name")
    entry.pidfd.pid = target
    if target == DEAD:
        return
    if d.in_flight_only:
        raise _refused(holder, fd, f"process {target}, in flight (SCM_RIGHTS)")
    if entry.flags & PIDFD_THREAD and tgid(target) != target:
        raise _refused(holder, fd, f"thread {target} (PIDFD_THREAD; threads are made after descriptors)")
    why = unreachable(holder, target, tree)
    if why:
        raise _refused(holder, fd, why)


def unreachable(holder: int, target: int, tree: Collection[int]) -> str | None:
    """Why process ``target`` will not exist yet when ``holder``'s descriptors are restored (None: it will):
    only the holder, its ancestors, and their children (zombies too) do then."""
    chain = [holder]
    while chain[-1] in tree and (up := _parent(chain[-1])) is not None and up in tree:
        chain.append(up)
    if target in chain:
        return None  # itself or an ancestor
    parent = _parent(target)
    if parent in chain:
        return None  # a child (a zombie too) of itself or of an ancestor
    if target in tree or parent in tree:
        return f"process {target} of the tree, which is made after process {holder}'s descriptors"
    return f"process {target}, outside the dumped tree"


def _reaped(flags: int) -> int:
    """A pidfd of ours of a process that ended and was reaped (a child of ours, run for the moment)."""
    child = subprocess.Popen(["true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True)
    try:
        return pidfd_open(child.pid, flags)  # running or a zombie: it is ours, not reaped yet
    finally:
        child.wait()


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """The pidfd of ``entry`` made in the target (a temporary fd, close-on-exec)."""
    inj = r.inj
    flags = entry.flags & _OPEN_FLAGS
    if entry.pidfd.pid == DEAD:
        ours = _reaped(flags)
        try:
            return inj.receive(ours, "a pidfd of a reaped process")
        finally:
            os.close(ours)
    try:
        return inj.call(NR.pidfd_open, entry.pidfd.pid, flags, name=f"pidfd_open({entry.pidfd.pid})")
    except OSError as exc:
        raise RestoreError(f"cannot open a pidfd of process {entry.pidfd.pid} again: {exc.strerror}") from exc


KIND = FdKind(files_pb2.FileEntry.PIDFD, anon(LINK), dump, restore)
