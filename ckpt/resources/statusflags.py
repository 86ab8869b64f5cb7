"""File status flags: each open file made again by its kind gets exactly the flags it had, the settable ones here.

A kind makes a new open file however its object is made (open, pipe2,
socket, eventfd2, epoll_create1, memfd_create …), and not every call takes
every flag: epoll_create1 takes only EPOLL_CLOEXEC, memfd_create's file takes
none, O_ASYNC is taken by no call that makes a descriptor (only F_SETFL
arms it).  So once a kind has made its open file, the registry hands it here:
its flags are read from the kernel (``/proc/PID/fdinfo/N``, nothing injected
when they are right) and the ones ``F_SETFL`` sets — O_APPEND, O_NONBLOCK,
O_ASYNC, O_DIRECT (packet mode on a pipe or FIFO), O_NOATIME (fs/fcntl.c
``SETFL_MASK``) — are set as the dump recorded them, in one call.  What only
an open sets (the access mode, O_SYNC/O_DSYNC, O_PATH, O_DIRECTORY …) is its
kind's to pass; the restore's self-check compares the whole ``flags:`` line
with the dump's, so a kind that misses one fails the restore instead of
dropping it.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import RestoreError
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..procfs.fdinfo import read_fdinfo
from .fdkind import Opener

__all__ = ["SETFL_MASK", "settle"]

#: The status flags F_SETFL changes (include/linux/fs.h, SETFL_MASK); O_ASYNC is FASYNC, 0o20000 on x86.
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000
_O_PATH = 0o10000000


def settle(r: Opener, fd: int, e: files_pb2.FileEntry) -> None:
    """Give the target's new open file ``fd`` the settable status flags of ``e`` (one F_SETFL when any differ)."""
    if e.flags & _O_PATH:
        return  # an O_PATH descriptor has no status flags to set (F_SETFL: EBADF)
    now = read_fdinfo(r.inj.pid, fd).flags
    if not (now ^ e.flags) & SETFL_MASK:
        return
    want = (now & ~SETFL_MASK & ~os.O_CLOEXEC) | (e.flags & SETFL_MASK)
    try:
        r.inj.call(NR.fcntl, fd, fcntl.F_SETFL, want, name=f"fcntl({fd}, F_SETFL, {want:#o})")
    except OSError as exc:
        raise RestoreError(f"file {e.id} ({e.path or files_pb2.FileEntry.Kind.Name(e.kind)}): its status flags "
                           f"{e.flags & SETFL_MASK:#o} cannot be set again: {exc.strerror}") from exc
