"""POSIX shared memory as postgres uses it: a file in /dev/shm (shm_open), sized, mapped shared, its
descriptor closed; a forked child maps it too.

``py_posix_shm.py NAME`` creates ``/dev/shm/NAME`` (1 MiB), writes a pattern into its first 256 KiB
through the mapping, and prints ``READY pid=PID child=CHILD``.  On SIGUSR1 the parent checks the pattern,
that the mapping is still the file's (a mark written through it is read back from the file by path), and
pings the child through it; prints ``PASS posix-shm round=N`` or ``FAIL ...``.
"""

import mmap
import os
import signal
import sys
import time

from pingpong import fork_child, ping

SIZE = 1 << 20
PATTERN = (b"posix-shm:" * SIZE)[:256 << 10]
path = f"/dev/shm/{sys.argv[1]}"
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.ftruncate(fd, SIZE)
shm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED)
os.close(fd)
shm[:len(PATTERN)] = PATTERN


def read(offset: int, n: int) -> bytes:
    return shm[offset:offset + n]


def write(offset: int, data: bytes) -> None:
    shm[offset:offset + len(data)] = data


child = fork_child(read, write, 512 << 10, (512 << 10) + 4096, setup=lambda: None)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    if shm[:len(PATTERN)] != PATTERN:
        bad.append("the pattern differs")
    mark = f"mark-{rounds}".encode()
    write(768 << 10, mark)
    with open(path, "rb") as f:
        f.seek(768 << 10)
        if f.read(len(mark)) != mark:
            bad.append(f"{path} is not the file mapped")
    got = ping(child, rounds, write, 512 << 10, read, (512 << 10) + 4096)
    if got is not None:
        bad.append(f"no pong-{rounds} from the child ({got!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS posix-shm round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
