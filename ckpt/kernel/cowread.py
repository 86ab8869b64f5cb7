"""Reading a running process's memory without ending the copy-on-write sharing it has with a fork.

``process_vm_readv`` pins the pages it reads, and since Linux 5.19 the kernel
copies an anonymous page that is not exclusive to the process before pinning it
(``gup_must_unshare``): reading a parent and its forked children that way gives
each its own copy of every page read (:mod:`ckpt.resources.cow` has the
measurements).  :class:`SharingReader` asks pagemap first (bit 56, one pread of
4 KiB of entries per 2 MiB read) and reads only the shared anonymous pages
through ``/proc/PID/mem`` (no pin, no copy); the rest, everything a lone
process maps, still goes through one ``process_vm_readv``.  The trackers'
reads use it: hash reads every tracked page at each collection, soft-dirty
hashes the 2 MiB blocks it finds wholly written (all of them at the first).
"""

from __future__ import annotations

import os

from .arch_x86_64 import PAGE_SIZE
from .pagemap import shared_anon
from .vm import buffer_address, process_vm_readv

__all__ = ["SharingReader"]


class SharingReader:
    """``/proc/PID/pagemap`` and ``/proc/PID/mem`` of ``pid`` opened once; reads leave shared pages shared."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._pagemap)
            raise

    def readinto(self, addr: int, view: memoryview) -> int:
        """Read ``len(view)`` bytes (whole pages) at ``addr`` into ``view``; the bytes read before the first
        page that cannot be read.  Raises OSError (as ``process_vm_readv``) when not even the first can."""
        end = addr + len(view)
        shared = shared_anon(self._pagemap, [(addr, end)])
        if not shared:
            return process_vm_readv(self.pid, [(buffer_address(view), len(view))], [(addr, len(view))])
        done = 0
        pos = addr
        for s, e in [*shared, (end, end)]:
            for lo, hi, through_mem in ((pos, s, False), (s, e, True)):
                if lo >= hi:
                    continue
                part = view[lo - addr:hi - addr]
                try:
                    got = (os.preadv(self._mem, [part], lo) if through_mem
                           else process_vm_readv(self.pid, [(buffer_address(part), hi - lo)], [(lo, hi - lo)]))
                except OSError:
                    if done == 0:
                        raise
                    return done
                done += got // PAGE_SIZE * PAGE_SIZE if got < hi - lo else got
                if got < hi - lo:
                    return done
            pos = e
        return done

    def close(self) -> None:
        """Close both descriptors.  Idempotent."""
        for name in ("_pagemap", "_mem"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> "SharingReader":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
