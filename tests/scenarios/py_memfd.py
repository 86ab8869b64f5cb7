"""A memfd shared by a parent and its child: by descriptor and by MAP_SHARED mapping, with seals.

The parent creates ``memfd:ckpt-test`` (1 MiB + 1 page, a hole in the middle),
writes a pattern, seals it against shrinking, maps it and forks; the child
writes ``child`` at 4096 through its mapping.  Prints ``READY pid=PARENT
child=CHILD``.  On SIGUSR1 the parent checks the name, size, seals, the
pattern and the child's bytes (through its descriptor and its mapping), asks
the child (SIGUSR1) to write ``pong-N`` at 8192 and sees it: one object.
"""

import fcntl
import mmap
import os
import signal
import time

from pingpong import fork_child, ping

SIZE = (1 << 20) + 4096
PATTERN = bytes(i % 253 for i in range(4096))
fd = os.memfd_create("ckpt-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
os.ftruncate(fd, SIZE)
os.pwrite(fd, PATTERN, 0)
os.pwrite(fd, PATTERN, 1 << 20)  # the last page; the ones in between stay holes
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
view = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)


def read(offset: int, n: int) -> bytes:
    return view[offset:offset + n]


def write(offset: int, data: bytes) -> None:
    view[offset:offset + len(data)] = data


def read_fd(offset: int, n: int) -> bytes:  # through the descriptor, not the mapping
    return os.pread(fd, n, offset)


child = fork_child(read, write, 16384, 8192, setup=lambda: write(4096, b"child"))
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    link = os.readlink(f"/proc/self/fd/{fd}")
    if link != "/memfd:ckpt-test (deleted)":
        bad.append(f"fd links to {link!r}")
    if os.fstat(fd).st_size != SIZE:
        bad.append(f"size {os.fstat(fd).st_size}")
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) != fcntl.F_SEAL_SHRINK:
        bad.append(f"seals {fcntl.fcntl(fd, fcntl.F_GET_SEALS):#x}")
    if os.pread(fd, 4096, 0) != PATTERN or view[(1 << 20):(1 << 20) + 4096] != PATTERN:
        bad.append("pattern lost")
    if os.pread(fd, 5, 4096) != b"child" or view[4096:4101] != b"child":
        bad.append(f"child's bytes {os.pread(fd, 5, 4096)!r}")
    if view[12288:16384] != bytes(4096):
        bad.append("a hole is not zero")
    got = ping(child, rounds, write, 16384, read_fd, 8192)
    if got is not None:
        bad.append(f"no pong through the memfd (offset 8192: {got!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS memfd round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
