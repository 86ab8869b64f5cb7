"""signalfd: its signal mask (fdinfo ``sigmask:``), re-created by an injected signalfd4.

The mask is all the state a signalfd has: the signals it reads are the
process's (or thread's) pending ones, which the signals and threads modules
restore with the process.  SFD_NONBLOCK and SFD_CLOEXEC are the file's
O_NONBLOCK and the descriptor's FD_CLOEXEC.
"""

from __future__ import annotations

import os
import struct

from ..control.inject import Injector, Scratch
from ..errors import Unsupported
from ..image.pb import files_pb2
from ..kernel.arch_x86_64 import NR
from ..procfs.fdinfo import FdInfo

__all__ = ["dump", "restore"]

_SIGSET = struct.Struct("<Q")  # the kernel's sigset_t: 64 signals on x86_64


def dump(pid: int, fd: int, info: FdInfo, entry: files_pb2.FileEntry) -> None:
    mask = info.sigmask
    if mask is None:
        raise Unsupported(f"process {pid}: fd {fd} is a signalfd whose fdinfo shows no signal mask")
    entry.kind = files_pb2.FileEntry.SIGNALFD
    entry.signalfd.CopyFrom(files_pb2.SignalFd(sigmask=mask))


def restore(inj: Injector, s: Scratch, entry: files_pb2.FileEntry) -> int:
    s.write(0, _SIGSET.pack(entry.signalfd.sigmask))
    return inj.call(NR.signalfd4, -1, s.addr, _SIGSET.size, os.O_CLOEXEC | (entry.flags & os.O_NONBLOCK),
                    name=f"signalfd4({entry.signalfd.sigmask:#x})")
