"""A redis-like Python target: a parent holding a dataset forks a child that saves it (BGSAVE).

usage: py_bgsave.py [MIB]   (default 32)

The parent builds MIB MiB of pseudo-random bytes (a fixed seed), one bytes
object, and forks a child that holds it without writing it, as redis's BGSAVE
child does while it writes its snapshot: the dataset is one physical copy for
both until one of them writes.  The parent prints ``READY pids=PARENT,CHILD``.
Each SIGUSR1 to the parent is passed on to the child; each checks the SHA-256
of its dataset and prints ``PASS parent`` / ``PASS child`` (or ``FAIL ...``).
"""

import hashlib
import os
import random
import signal
import sys


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 32) << 20
    data = random.Random(6379).randbytes(size)
    digest = hashlib.sha256(data).digest()
    child = 0

    def check(*_: object) -> None:
        if child:
            os.kill(child, signal.SIGUSR1)
        who = "parent" if child else "child"
        ok = hashlib.sha256(data).digest() == digest
        line = f"PASS {who}" if ok else f"FAIL {who}: the dataset changed"
        os.write(1, f"{line}\n".encode())  # one write: the two processes share the pipe (print -u writes twice)

    signal.signal(signal.SIGUSR1, check)
    child = os.fork()
    if child == 0:
        while True:
            signal.pause()
    print(f"READY pids={os.getpid()},{child}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
