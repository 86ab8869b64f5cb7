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

SIZE = 64 * 1024
shared = mmap.mmap(-1, SIZE)  # MAP_SHARED | MAP_ANONYMOUS
shared[:5] = b"hello"
ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(ready_r)

    def pong(*_: object) -> None:
        n = shared[16384:16400].rstrip(b"\0").decode().split("-")[1]
        shared[20480:20496] = f"pong-{n}".encode().ljust(16, b"\0")

    signal.signal(signal.SIGUSR1, pong)
    shared[8192:8197] = b"child"
    os.write(ready_w, b"x")
    os.close(ready_w)
    while True:
        time.sleep(1)
os.close(ready_w)
os.read(ready_r, 1)
os.close(ready_r)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    if shared[:5] != b"hello":
        bad.append(f"offset 0 holds {shared[:5]!r}")
    if shared[8192:8197] != b"child":
        bad.append(f"offset 8192 holds {shared[8192:8197]!r}")
    shared[16384:16400] = f"ping-{rounds}".encode().ljust(16, b"\0")
    os.kill(child, signal.SIGUSR1)
    deadline = time.monotonic() + 3
    want = f"pong-{rounds}".encode().ljust(16, b"\0")
    while shared[20480:20496] != want and time.monotonic() < deadline:
        time.sleep(0.005)
    if shared[20480:20496] != want:
        bad.append(f"no {want.rstrip(bytes(1))!r} from the child (offset 20480 holds {shared[20480:20496]!r})")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS shared round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
