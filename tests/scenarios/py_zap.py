"""A target that drops pages between checkpoints: MADV_DONTNEED, then writes or only reads.

The cases where a dirty tracker's bits have nowhere to live (the pte or the huge
PMD is gone) and some kernels mis-report them (DESIGN §8): a delta must still
carry what the process sees.  Every page starts with an 8-byte value (1 at start).

Areas (reported in READY): ``a`` 64 small pages (MADV_NOHUGEPAGE); ``h`` and ``z``
one 2 MiB huge page each (PMD-aligned, MADV_HUGEPAGE; ``thp=1`` when both
really are huge pages now, see AnonHugePages).

Commands on stdin, each answered with ``OK``:
  ``zap``    a: pages 10-19 dropped, then page 12 written (2), pages 40-41 dropped, then read;
             h: the whole huge page dropped, then page 5 written (2);
             z: the whole huge page dropped, then read (the huge zero page, where THP allows it).
  ``touch``  a: page 30 written (3).
"""

import mmap
import os
import struct
import sys

P = 4096
HUGE = 2 << 20


def area(size: int, huge: bool) -> tuple[mmap.mmap, int]:
    """An anonymous private mapping holding a ``size`` bytes PMD-aligned piece: (mapping, offset of the piece)."""
    m = mmap.mmap(-1, size + (HUGE if huge else 0), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = addr_of(m)
    off = (-base) % HUGE if huge else 0
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE, off, size)
    for p in range(size // P):
        struct.pack_into("<Q", m, off + p * P, 1)
    return m, off


def addr_of(m: mmap.mmap) -> int:
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def anon_huge_kb(lo: int, hi: int) -> int:
    """AnonHugePages of the mappings inside [lo, hi), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                s, e = (int(x, 16) for x in first.split("-"))
                inside = lo <= s and e <= hi
            elif inside and line.startswith("AnonHugePages:"):
                total += int(line.split()[1])
    return total


def main() -> int:
    a, a_off = area(64 * P, False)
    h, h_off = area(HUGE, True)
    z, z_off = area(HUGE, True)
    ha, za = addr_of(h) + h_off, addr_of(z) + z_off
    thp = anon_huge_kb(ha, ha + HUGE) >= 2048 and anon_huge_kb(za, za + HUGE) >= 2048
    print(f"READY pid={os.getpid()} a={addr_of(a) + a_off:#x} h={ha:#x} z={za:#x} thp={int(thp)}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "zap":
            a.madvise(mmap.MADV_DONTNEED, a_off + 10 * P, 10 * P)
            struct.pack_into("<Q", a, a_off + 12 * P, 2)
            a.madvise(mmap.MADV_DONTNEED, a_off + 40 * P, 2 * P)
            _ = a[a_off + 40 * P] + a[a_off + 41 * P]
            h.madvise(mmap.MADV_DONTNEED, h_off, HUGE)
            struct.pack_into("<Q", h, h_off + 5 * P, 2)
            z.madvise(mmap.MADV_DONTNEED, z_off, HUGE)
            _ = z[z_off] + z[z_off + 7 * P]
        elif cmd == "touch":
            struct.pack_into("<Q", a, a_off + 30 * P, 3)
        else:
            print(f"FAIL unknown command {cmd!r}", flush=True)
            continue
        print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
