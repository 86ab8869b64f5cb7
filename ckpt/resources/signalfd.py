"""signalfd: its signal mask (fdinfo ``sigmask:``), re-created by an injected signalfd4.

The mask is all the state a signalfd has: the signals it reads are the
process's (or thread's) pending ones, which the signals and threads modules
restore with the process.  SFD_NONBLOCK and SFD_CLOEXEC are the file's
O_NONBLOCK and the descriptor's FD_CLOEXEC.
"""

from __future__ import annotations

import os
import struct

from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from .fdkind import FdDump, FdKind, Opener, anon

__all__ = ["KIND", "dump", "restore"]

_SIGSET = struct.Struct("<Q")  # the kernel's sigset_t: 64 signals on x86_64


def dump(d: FdDump, entry: files_pb2.FileEntry) -> None:
    mask = d.info.sigmask
    if mask is None:
        raise d.refuse("a signalfd whose fdinfo shows no signal mask")
    entry.signalfd.CopyFrom(files_pb2.SignalFd(sigmask=mask))


def restore(r: Opener, entry: files_pb2.FileEntry, fds: list[int]) -> int:
    inj, s = r.inj, r.s
    s.write(0, _SIGSET.pack(entry.signalfd.sigmask))
    return inj.call(NR.signalfd4, -1, s.addr, _SIGSET.size, os.O_CLOEXEC | (entry.flags & os.O_NONBLOCK),
                    name=f"signalfd4({entry.signalfd.sigmask:#x})")


KIND = FdKind(files_pb2.FileEntry.SIGNALFD, anon("anon_inode:[signalfd]"), dump, restore)
