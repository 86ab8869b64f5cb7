"""eventfd: its counter and EFD_SEMAPHORE, read from fdinfo, re-created by an injected eventfd2.

The counter is all the state an eventfd has (fdinfo ``eventfd-count``); a
waiter blocked in read() simply reads again after the restore.  O_NONBLOCK
and O_CLOEXEC come with the file's flags like any other descriptor.
"""

from __future__ import annotations

import os

from ..control.inject import Injector
from ..errors import Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..procfs.fdinfo import FdInfo

__all__ = ["EFD_SEMAPHORE", "dump", "restore"]

EFD_SEMAPHORE = 1


def dump(pid: int, fd: int, info: FdInfo, entry: files_pb2.FileEntry) -> None:
    count = info.eventfd_count
    if count is None:
        raise Unsupported(f"process {pid}: fd {fd} is an eventfd whose fdinfo shows no counter")
    entry.kind = files_pb2.FileEntry.EVENTFD
    entry.eventfd.CopyFrom(files_pb2.EventFd(counter=count, flags=EFD_SEMAPHORE if info.eventfd_semaphore else 0))


def restore(inj: Injector, entry: files_pb2.FileEntry) -> int:
    """A new eventfd with the saved counter (eventfd2 takes an unsigned int: larger counters are topped up)."""
    e = entry.eventfd
    flags = os.O_CLOEXEC | (e.flags & EFD_SEMAPHORE) | (entry.flags & os.O_NONBLOCK)
    first = min(e.counter, 0xFFFFFFFF)
    fd = inj.call(NR.eventfd2, first, flags, name=f"eventfd2({first})")
    if e.counter > first:  # the rest through write(2) of a u64, from a scratch page
        with inj.scratch(8) as s:
            s.write(0, (e.counter - first).to_bytes(8, "little"))
            inj.call(NR.write, fd, s.addr, 8, name="write(eventfd)")
    return fd
