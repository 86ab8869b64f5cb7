"""hugetlb memory (the huge pages the host reserved in /proc/sys/vm/nr_hugepages): MAP_HUGETLB private and
shared anonymous memory, a MFD_HUGETLB memfd mapped shared (its descriptor kept open too), and with
``py_hugetlb.py DIR`` (a hugetlbfs mount) a file there mapped shared and private.

Each area is two 2 MiB huge pages; the first gets a pattern, the second stays untouched (but for the
shared anonymous one, through which a forked child answers pings).  Prints ``READY pid=PID child=CHILD
areas=NAME,...`` (``SKIP NAME why`` for what the kernel refuses).  On SIGUSR1 each area is checked: its
bytes, VmFlags ``ht``, KernelPageSize 2048 kB, for the memfd that the descriptor and the mapping are still
one object (a byte written through one is read through the other), and the child is pinged; prints
``PASS hugetlb round=N`` or ``FAIL ...``.
"""

import ctypes
import mmap
import os
import signal
import sys
import time

from pingpong import fork_child, ping

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]

HUGE = 2 << 20
SIZE = 2 * HUGE
MAP_HUGETLB = 0x40000
MFD_HUGETLB = 0x4
RW = mmap.PROT_READ | mmap.PROT_WRITE


def pattern(name: str) -> bytes:
    return (f"{name}-huge:".encode() * HUGE)[:HUGE]


def smaps_of(addr: int) -> tuple[set[str], str]:
    """(VmFlags, KernelPageSize) of the mapping starting at ``addr``."""
    flags, size, inside = set(), "", False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                inside = int(head.split("-")[0], 16) == addr
            elif inside and head == "KernelPageSize:":
                size = " ".join(line.split()[1:])
            elif inside and head == "VmFlags:":
                flags = set(line.split()[1:])
    return flags, size


areas: dict[str, int] = {}
memfd = -1
cases = [("private", mmap.MAP_PRIVATE), ("shared", mmap.MAP_SHARED), ("memfd", mmap.MAP_SHARED)]
if len(sys.argv) > 1:
    cases += [("file-shared", mmap.MAP_SHARED), ("file-private", mmap.MAP_PRIVATE)]
    hfile = os.open(os.path.join(sys.argv[1], "huge-file"), os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(hfile, SIZE)
for name, flags in cases:
    fd = -1
    if name.startswith("file"):
        fd = hfile
    elif name == "memfd":
        try:
            fd = memfd = os.memfd_create("huge", MFD_HUGETLB)
            os.ftruncate(fd, SIZE)
        except OSError as exc:
            print(f"SKIP {name} {exc.strerror}", flush=True)
            continue
    else:
        flags |= mmap.MAP_ANONYMOUS | MAP_HUGETLB
    addr = libc.mmap(None, SIZE, RW, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print(f"SKIP {name} {os.strerror(ctypes.get_errno())}", flush=True)
        continue
    ctypes.memmove(addr, pattern(name), HUGE)
    areas[name] = addr
rounds = 0
PING, PONG = HUGE, HUGE + 4096  # in the shared anonymous area


def read(offset: int, n: int) -> bytes:
    return ctypes.string_at(areas["shared"] + offset, n)


def write(offset: int, data: bytes) -> None:
    ctypes.memmove(areas["shared"] + offset, data, len(data))


child = fork_child(read, write, PING, PONG, setup=lambda: None)


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    for name, addr in areas.items():
        flags, size = smaps_of(addr)
        if "ht" not in flags or size != "2048 kB":
            bad.append(f"{name}: VmFlags {' '.join(sorted(flags))}, KernelPageSize {size!r}")
        if ctypes.string_at(addr, HUGE) != pattern(name):
            bad.append(f"{name}: first huge page holds {ctypes.string_at(addr, 24)!r}")
        if name != "shared" and ctypes.string_at(addr + HUGE, HUGE) != bytes(HUGE):
            bad.append(f"{name}: second huge page is not zero")
    if name == "file-shared" and os.pread(hfile, 16, 0) != pattern(name)[:16]:
        bad.append("the hugetlbfs file does not hold what its shared mapping wrote")
    if "memfd" in areas:
        at = areas["memfd"] + HUGE + 4096 * rounds
        mark = f"round-{rounds}".encode()
        ctypes.memmove(at, mark, len(mark))
        if os.pread(memfd, len(mark), HUGE + 4096 * rounds) != mark:
            bad.append("the memfd and its mapping are not one object")
        ctypes.memset(at, 0, len(mark))
    got = ping(child, rounds, write, PING, read, PONG)
    if got is not None:
        bad.append(f"no pong-{rounds} from the child through the shared huge pages ({got!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS hugetlb round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child} areas={','.join(areas)}", flush=True)
while True:
    time.sleep(1)
