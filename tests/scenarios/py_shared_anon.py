"""Two processes sharing anonymous memory (MAP_SHARED|MAP_ANONYMOUS, inherited across fork).

The parent writes ``hello`` at offset 0 before the fork; the child writes
``child`` at 8192 after it (a page the parent's page table never had).
Prints ``READY pid=PARENT child=CHILD``.  On SIGUSR1 the parent checks both,
writes ``ping-N`` at 16384 and signals the child, which answers ``pong-N`` at
20480 through the same memory; the parent prints PASS or FAIL.
"""

import mmap
import os
import signal
import time

from pingpong import fork_child, ping

SIZE = 64 * 1024
shared = mmap.mmap(-1, SIZE)  # MAP_SHARED | MAP_ANONYMOUS
shared[:5] = b"hello"


def read(offset: int, n: int) -> bytes:
    return shared[offset:offset + n]


def write(offset: int, data: bytes) -> None:
    shared[offset:offset + len(data)] = data


child = fork_child(read, write, 16384, 20480, setup=lambda: write(8192, b"child"))
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    if shared[:5] != b"hello":
        bad.append(f"offset 0 holds {shared[:5]!r}")
    if shared[8192:8197] != b"child":
        bad.append(f"offset 8192 holds {shared[8192:8197]!r}")
    got = ping(child, rounds, write, 16384, read, 20480)
    if got is not None:
        bad.append(f"no pong-{rounds} from the child (offset 20480 holds {got!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS shared round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
