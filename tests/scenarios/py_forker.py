"""A Python target that forks on request, for tracking inherited by a child.

Prints ``READY pid=PID``; each ``fork`` line on stdin forks a child that
prints ``CHILD pid=PID`` and keeps rewriting its own buffer with a counter;
on SIGUSR1 the child checks that the buffer holds its last counter on every
page and prints PASS or FAIL.  The parent keeps rewriting its own buffer
and reaps its children at once.
"""

import os
import signal
import sys
import time

PAGES = 256


def child() -> None:
    buf = bytearray(PAGES * 4096)
    n = 0

    def check(*_: object) -> None:
        bad = [i for i in range(PAGES) if buf[i * 4096] != n % 251]
        print(f"FAIL pages {bad[:5]} do not hold {n % 251}" if bad else f"PASS child {os.getpid()} n={n}", flush=True)

    signal.signal(signal.SIGUSR1, check)
    print(f"CHILD pid={os.getpid()}", flush=True)
    while True:
        n += 1
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # the check never sees a half-written round
        for i in range(PAGES):
            buf[i * 4096] = n % 251
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        time.sleep(0.01)


def main() -> None:
    buf = bytearray(PAGES * 4096)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # a child killed by a dump is reaped, so its pid is free again
    print(f"READY pid={os.getpid()}", flush=True)
    os.set_blocking(0, False)
    n = 0
    while True:
        try:
            line = os.read(0, 100)
        except BlockingIOError:
            line = b""
        if line.startswith(b"fork") and os.fork() == 0:
            child()
        n += 1
        for i in range(0, PAGES, 4):
            buf[i * 4096] = n % 251
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
