"""Files and directories of procfs the process opened (its /proc/self/stat, /proc/PID/maps, a /proc/PID fd).

A /proc file is no file to compare: its size is 0 and its mtime is when the
kernel made its inode, so the regular check of a reopened file (size, mtime,
build-id: :mod:`ckpt.resources.fileid`) would call every one "changed".  And
what it shows is made when it is read, from the process its path names.

``readlink`` gives the path with the pid in it (``/proc/self/stat`` opened by
process 1234 reads ``/proc/1234/stat``), and a restore gives every process
its pid again, so the same path names the same process's file after the
restore.  The path is reopened inside the holder, with its flags (O_PATH
too), at its offset (a seq_file re-reads up to it), and checked only by its
type.  /proc of the restorer is never involved: the open runs in the holder,
with the pid the path names, never ``self``.

Which process a path names must exist when its holder's descriptors are made
(:func:`ckpt.resources.pidfd.unreachable`: the holder itself, its ancestors
and their children); its threads are made after the descriptors, so a path of
another thread than the leader (``/proc/PID/task/TID``) is refused, as is a
file of a process outside the dumped tree (it may be gone, or another
process, at the restore), naming it.  A file of no process (``/proc/meminfo``,
``/proc/sys/...``) is reopened by its path.  A namespace file opened from
``/proc/PID/ns`` (readlink ``net:[4026531833]``: no path to reopen, and the
restore may put the process in another namespace) is refused at dump.
"""

from __future__ import annotations

import os
import re
import stat
from ..errors import RestoreError, Unsupported
from ..image.pb import files_pb2
from . import pidfd
from .fdkind import FdDump, FdKind, Opener
from .paths import open_flags

__all__ = ["KIND", "is_proc", "dump", "restore"]

_PID_PATH = re.compile(r"^/proc/(\d+)(?:/task/(\d+))?(?:/|$)")
#: readlink of a descriptor of /proc/PID/ns/TYPE.
_NS_LINK = re.compile(r"^(cgroup|ipc|mnt|net|pid|pid_for_children|time|time_for_children|user|uts):\[\d+\]$")


def is_proc(link: str, st: os.stat_result) -> bool:
    """Is the descriptor's file (readlink ``link``, ``st`` through its /proc/PID/fd link) one of procfs (or a
    namespace file opened there)?"""
    if _NS_LINK.match(link):
        return True
    if not (link == "/proc" or link.startswith("/proc/")):
        return False
    try:
        return st.st_dev == os.stat("/proc").st_dev
    except OSError:
        return False


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    """Record which process the /proc file belongs to; Unsupported if a restore could not reopen it for it."""
    holder, fd, link = d.pid, d.fd, d.o.link
    if _NS_LINK.match(link):
        raise d.refuse(f"the namespace {link} (opened from /proc/PID/ns)",
                       hint="let the program close it before the dump")
    m = _PID_PATH.match(link)
    if not m:
        return  # a file of no process
    pid, tid = int(m.group(1)), int(m.group(2) or m.group(1))
    entry.proc.pid = tid
    where = f"process {holder}: fd {fd} is {link}, a /proc file of"
    if d.in_flight_only:
        raise Unsupported(f"{where} process {pid}, in flight (SCM_RIGHTS), which ckpt cannot restore")
    if tid != pid or pidfd.tgid(pid) != pid:
        raise Unsupported(f"{where} thread {tid}, which ckpt cannot reopen (threads are made after descriptors)")
    why = pidfd.unreachable(holder, pid, d.opts.tree)
    if why:
        raise Unsupported(f"{where} {why}, which ckpt cannot reopen for it",
                          hint="dump the process it belongs to with it (-t of a common ancestor), or let the program "
                               "close it")


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """The /proc file of ``entry`` reopened in the target at its offset (a temporary fd)."""
    fd = r.openat(entry.path, open_flags(entry), "the /proc file")
    st = os.stat(f"/proc/{r.inj.pid}/fd/{fd}")
    if entry.identity.mode and stat.S_IFMT(st.st_mode) != stat.S_IFMT(entry.identity.mode):
        r.inj.close(fd)
        raise RestoreError(f"{entry.path} is no longer what it was at the dump (mode {st.st_mode:o}, was "
                           f"{entry.identity.mode:o})")
    r.seek(fd, entry)
    return fd


KIND = FdKind(files_pb2.FileEntry.PROC, lambda o: is_proc(o.link, o.st), dump, restore)
