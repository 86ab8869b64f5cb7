"""Parts of one big shared anonymous object (1 GiB, MAP_SHARED|MAP_ANONYMOUS, sparse), each process mapping
another part of it.

The parent maps the object and writes ``P`` marks at 0, 300, 600 and 900 MiB, then forks two children:
A unmaps [512 MiB, 1 GiB) (keeps [0, 512 MiB)) and writes ``A`` at 100 MiB; B unmaps [0, 128 MiB) and
[768 MiB, 1 GiB) and writes ``B`` at 700 MiB.  Then the parent unmaps [0, 256 MiB) and [400, 450 MiB)
(its own view is two parts, neither at offset 0).  Prints ``READY pid=PARENT a=A b=B``.  On SIGUSR1 the
parent checks its marks and B's, A's mark through A's memory, and pings each child through the part
all three still map ([256, 400 MiB)); prints ``PASS shmem-parts round=N`` or ``FAIL ...``.
"""

import ctypes
import mmap
import os
import signal
import time

from pingpong import fork_child, ping

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

M = 1 << 20
SIZE = 1024 * M
base = libc.mmap(None, SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
if base in (None, ctypes.c_void_p(-1).value):
    raise OSError(ctypes.get_errno(), "mmap")


def read(offset: int, n: int) -> bytes:
    return ctypes.string_at(base + offset, n)


def write(offset: int, data: bytes) -> None:
    ctypes.memmove(base + offset, data, len(data))


def unmap(lo: int, hi: int) -> None:
    if libc.munmap(base + lo * M, (hi - lo) * M):
        raise OSError(ctypes.get_errno(), "munmap")


def mark(who: str, at: int) -> bytes:
    return f"{who}@{at}".encode().ljust(16, b"\0")


for at in (0, 300, 600, 900):
    write(at * M, mark("P", at))


def setup_a() -> None:
    unmap(512, 1024)
    write(100 * M, mark("A", 100))


def setup_b() -> None:
    unmap(0, 128)
    unmap(768, 1024)
    write(700 * M, mark("B", 700))


a = fork_child(read, write, 256 * M, 256 * M + 4096, setup_a)
b = fork_child(read, write, 260 * M, 260 * M + 4096, setup_b)
unmap(0, 256)
unmap(400, 450)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    for who, at in (("P", 300), ("P", 600), ("P", 900), ("B", 700)):
        if read(at * M, 16) != mark(who, at):
            bad.append(f"{at} MiB holds {read(at * M, 16)!r}")
    fd = os.open(f"/proc/{a}/mem", os.O_RDONLY)
    try:
        got = os.pread(fd, 16, base + 100 * M)
    finally:
        os.close(fd)
    if got != mark("A", 100):
        bad.append(f"A's 100 MiB holds {got!r}")
    for child, at in ((a, 256), (b, 260)):
        got = ping(child, rounds, write, at * M, read, at * M + 4096)
        if got is not None:
            bad.append(f"no pong-{rounds} from {child} (found {got!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS shmem-parts round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} a={a} b={b}", flush=True)
while True:
    time.sleep(1)
