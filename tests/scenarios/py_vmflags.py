"""Memory areas with every mapping flag user space can set, filled with known bytes.

``py_vmflags.py [MODE ...]`` maps one area per case below (16 pages each), sets its flag with
mmap/madvise/mlock, writes a pattern into its pages (only half of them where the flag is about what is
not yet faulted in) and prints ``READY pid=PID areas=NAME,...`` (a case the kernel refuses is left out,
printed as ``SKIP NAME``).  MODE ``future``: ``mlockall(MCL_FUTURE)`` too (every later mapping locked);
``future-onfault``: with MCL_ONFAULT; ``merge-any``: ``prctl(PR_SET_MEMORY_MERGE)`` (KSM for every
mapping), one area made unmergeable again (``SKIP merge-any`` and neither area where the kernel has no
such prctl, before 6.4).  On SIGUSR1 every area is checked against what was set —
contents and the smaps VmFlags letters — as is the locked state of a fresh mapping; prints
``PASS vmflags round=N`` or ``FAIL ...``.
"""

import ctypes
import os
import signal
import sys
import time
from mmap import PROT_READ

from memareas import MAP_ANONYMOUS, MAP_PRIVATE, N, P, area, fill, libc, pattern

MAP_DROPPABLE, MAP_LOCKED, MAP_NORESERVE = 0x08, 0x2000, 0x4000
SYS_mlock2, MLOCK_ONFAULT, SYS_mseal = 325, 1, 462
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
PR_SET_MEMORY_MERGE, MADV_UNMERGEABLE = 67, 13
MADV = {"sr": 2, "rr": 1, "dc": 10, "mg": 12, "hg": 14, "nh": 15, "dd": 16, "wf": 18}


def smaps_flags() -> dict[int, tuple[set[str], int]]:
    """{start: (VmFlags letters, Rss bytes)} of this process's mappings."""
    out: dict[int, tuple[set[str], int]] = {}
    start, rss = -1, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                start = int(head.split("-")[0], 16)
            elif head == "Rss:":
                rss = int(line.split()[1]) * 1024
            elif head == "VmFlags:":
                out[start] = (set(line.split()[1:]), rss)
    return out


#: name -> (address, pages written, VmFlags letters wanted)
areas: dict[str, tuple[int, range, set[str]]] = {}


def case(name: str, letters: set[str], make, pages: range = range(N)) -> None:  # noqa: ANN001
    try:
        addr = make()
    except OSError as exc:
        print(f"SKIP {name} {os.strerror(exc.errno or 0)}", flush=True)
        return
    fill(name, addr, pages)
    areas[name] = (addr, pages, letters)


def advised(letter: str):  # noqa: ANN201
    def make() -> int:
        addr = area()
        if libc.madvise(addr, N * P, MADV[letter]):
            raise OSError(ctypes.get_errno(), "madvise")
        return addr
    return make


def locked() -> int:
    addr = area()
    if libc.mlock(addr, N * P):
        raise OSError(ctypes.get_errno(), "mlock")
    return addr


def locked_onfault() -> int:
    addr = area()
    if libc.syscall(SYS_mlock2, ctypes.c_void_p(addr), ctypes.c_size_t(N * P), MLOCK_ONFAULT):
        raise OSError(ctypes.get_errno(), "mlock2")
    return addr


def sealed(addr: int) -> int:
    if libc.syscall(SYS_mseal, ctypes.c_void_p(addr), ctypes.c_size_t(N * P), 0):
        raise OSError(ctypes.get_errno(), "mseal")
    return addr


def unmerged(addr: int) -> int:
    if libc.madvise(addr, N * P, MADV_UNMERGEABLE):
        raise OSError(ctypes.get_errno(), "madvise")
    return addr


modes = sys.argv[1:]
case("locked", {"lo"}, locked)
case("map-locked", {"lo"}, lambda: area(MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED))
case("onfault", {"lo"}, locked_onfault, range(0, N, 2))
case("droppable", {"dp", "wf", "nr"}, lambda: area(MAP_DROPPABLE | MAP_ANONYMOUS))
case("noreserve", {"nr"}, lambda: area(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE))
for letter in MADV:
    case(f"madv-{letter}", {letter}, advised(letter))
case("sealed", {"sl"}, lambda: sealed(area()))
merge_any = "merge-any" in modes
if merge_any:  # KSM for every mapping, made now or later; one made unmergeable again
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0):  # Linux 6.4; EINVAL before
        print(f"SKIP merge-any {os.strerror(ctypes.get_errno())}", flush=True)
        merge_any = False
    else:
        case("merge-any", {"mg"}, area)
        case("unmerged", set(), lambda: unmerged(area()))
future = "future" in modes or "future-onfault" in modes
if future:
    how = MCL_FUTURE | (MCL_ONFAULT if "future-onfault" in modes else 0)
    if libc.mlockall(how):
        raise OSError(ctypes.get_errno(), "mlockall")
    case("after-mlockall", {"lo"}, area, range(0, N, 2))
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    flags = smaps_flags()
    for name, (addr, pages, letters) in areas.items():
        have, rss = flags.get(addr, (set(), 0))
        if not letters <= have:
            bad.append(f"{name} lacks VmFlags {sorted(letters - have)} (has {' '.join(sorted(have))})")
        if name == "unmerged" and "mg" in have:
            bad.append(f"{name} has VmFlags mg again")
        if name in ("onfault", "after-mlockall") and "onfault" in name + " ".join(modes) and rss != len(pages) * P:
            bad.append(f"{name}: {rss} bytes resident, want only the {len(pages)} pages written")
        if name == "locked" and rss != N * P:
            bad.append(f"{name}: {rss} bytes resident, want all of it (locked)")
        for i in range(N):
            got = ctypes.string_at(addr + i * P, P)
            want = pattern(name, i) if i in pages else bytes(P)
            if got != want:
                bad.append(f"{name} page {i} holds {got[:24]!r}")
                break
    # a mapping made now is locked as mlockall(MCL_FUTURE) said, or not; read-only, so that it merges with no
    # neighbour (6.12 merges a new mapping into an unmergeable one before PR_SET_MEMORY_MERGE marks it)
    fresh = libc.mmap(None, N * P, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    fresh_flags = smaps_flags().get(fresh, (set(), 0))[0]
    libc.munmap(fresh, N * P)
    if ("lo" in fresh_flags) != future or ("mg" in fresh_flags) != merge_any:
        bad.append(f"a new mapping has VmFlags {' '.join(sorted(fresh_flags))} (mlockall(MCL_FUTURE): {future}, "
                   f"PR_SET_MEMORY_MERGE: {merge_any})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS vmflags round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} areas={','.join(areas)}", flush=True)
while True:
    time.sleep(1)
