"""Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) written by a child that has exited since.

The process writes ``hello`` at offset 0; its child writes ``child`` at 8192 — a page the parent's page table
never gets, as the parent does not touch it before the dump — and exits.  Prints ``READY pid=PID``; on
SIGUSR1 checks both and prints ``PASS shared-exited round=N`` or ``FAIL ...``.
"""

import mmap
import os
import signal
import time

shared = mmap.mmap(-1, 64 * 1024)  # MAP_SHARED | MAP_ANONYMOUS
shared[:5] = b"hello"
child = os.fork()
if child == 0:
    shared[8192:8197] = b"child"
    os._exit(0)
os.waitpid(child, 0)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    got = (shared[:5], shared[8192:8197])
    print(f"PASS shared-exited round={rounds}" if got == (b"hello", b"child") else f"FAIL holds {got!r}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
