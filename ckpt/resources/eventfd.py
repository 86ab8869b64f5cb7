"""eventfd: its counter and EFD_SEMAPHORE, read from fdinfo, re-created by an injected eventfd2.

The counter is all the state an eventfd has (fdinfo ``eventfd-count``); a
waiter blocked in read() simply reads again after the restore.  O_NONBLOCK
and O_CLOEXEC come with the file's flags like any other descriptor.
"""

from __future__ import annotations

import os

from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from .fdkind import FdDump, FdKind, Opener, anon

__all__ = ["EFD_SEMAPHORE", "KIND", "dump", "restore"]

EFD_SEMAPHORE = 1


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    info = d.info
    count = info.eventfd_count
    if count is None:
        raise d.refuse("an eventfd whose fdinfo shows no counter")
    entry.eventfd.CopyFrom(files_pb2.EventFd(counter=count, flags=EFD_SEMAPHORE if info.eventfd_semaphore else 0))


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    """A new eventfd with the saved counter (eventfd2 takes an unsigned int: larger counters are topped up)."""
    inj, e = r.inj, entry.eventfd
    flags = os.O_CLOEXEC | (e.flags & EFD_SEMAPHORE) | (entry.flags & os.O_NONBLOCK)
    first = min(e.counter, 0xFFFFFFFF)
    fd = inj.call(NR.eventfd2, first, flags, name=f"eventfd2({first})")
    if e.counter > first:  # the rest through write(2) of a u64, from a scratch page
        with inj.scratch(8) as s:
            s.write(0, (e.counter - first).to_bytes(8, "little"))
            inj.call(NR.write, fd, s.addr, 8, name="write(eventfd)")
    return fd


KIND = FdKind(files_pb2.FileEntry.EVENTFD, anon("anon_inode:[eventfd]"), dump, restore)
