"""Memory that cannot be read as it is: guard regions (MADV_GUARD_INSTALL, Linux 6.13), PROT_NONE, exec-only.

Each area is 16 pages with a pattern written first; then ``guard`` gets guard markers on pages 3-4 and 9
(leaving its VMA whole), ``none`` is made PROT_NONE, ``exec`` PROT_EXEC only; ``guard-file`` is the
first pages of the C library mapped private, guarded the same way (Linux 6.15).  Prints ``READY pid=PID
areas=NAME,...`` (``SKIP guard`` where the kernel has no guard regions).  On SIGUSR1 each area is checked
through ``/proc/self/mem`` (which reads PROT_NONE and exec-only pages) and ``/proc/self/pagemap`` (the
guard bit, PM_GUARD_REGION, on exactly the guarded pages); prints ``PASS unreadable round=N`` or ``FAIL ...``.
"""

import ctypes
import mmap
import os
import signal
import struct
import time

from memareas import N, P, area, fill, libc, pattern

MADV_GUARD_INSTALL = 102
PM_GUARD_REGION = 1 << 58
GUARDED = {3, 4, 9}


def guard(addr: int) -> set[int]:
    """Guard markers on pages 3-4 and 9 of the area at ``addr``; none where the kernel cannot."""
    for lo, hi in ((3, 5), (9, 10)):
        if libc.madvise(addr + lo * P, (hi - lo) * P, MADV_GUARD_INSTALL):
            return set()
    return GUARDED


def file_pages() -> tuple[int, list[bytes]]:
    """The first N pages of the C library (a file of more than N pages) mapped private and read-only, with
    their bytes."""
    with open("/proc/self/maps") as f:
        path = next(line.split()[-1] for line in f if "/libc.so" in line)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, N * P, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        return addr, [os.pread(fd, P, i * P) for i in range(N)]
    finally:
        os.close(fd)


areas: dict[str, tuple[int, set[int]]] = {}  # name -> (address, guarded pages)
expected: dict[str, list[bytes]] = {}
for name in ("guard", "none", "exec", "guard-file"):
    guarded: set[int] = set()
    if name == "guard-file":  # a file's pages (Linux 6.15 guards them too)
        addr, expected[name] = file_pages()
        guarded = guard(addr)
        if guarded:
            areas[name] = (addr, guarded)
        else:
            print(f"SKIP {name} {os.strerror(ctypes.get_errno())}", flush=True)
        continue
    addr = area()
    fill(name, addr)
    expected[name] = [pattern(name, i) for i in range(N)]
    if name == "guard":
        guarded = guard(addr)
        if not guarded:
            print(f"SKIP guard {os.strerror(ctypes.get_errno())}", flush=True)
            continue
    elif libc.mprotect(addr, N * P, mmap.PROT_EXEC if name == "exec" else 0):
        raise OSError(ctypes.get_errno(), "mprotect")
    areas[name] = (addr, guarded)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    mem = os.open("/proc/self/mem", os.O_RDONLY)
    pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for name, (addr, guarded) in areas.items():
            entries = os.pread(pagemap, 8 * N, addr // P * 8)
            marked = {i for i in range(N) if struct.unpack_from("<Q", entries, 8 * i)[0] & PM_GUARD_REGION}
            if marked != guarded:
                bad.append(f"{name}: guard pages {sorted(marked)}, want {sorted(guarded)}")
            for i in range(N):
                if i in guarded:
                    continue
                got = os.pread(mem, P, addr + i * P)
                if got != expected[name][i]:
                    bad.append(f"{name} page {i} holds {got[:24]!r}")
                    break
    finally:
        os.close(mem)
        os.close(pagemap)
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS unreadable round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} areas={','.join(areas)}", flush=True)
while True:
    time.sleep(1)
