"""A Python target that shows it keeps running: ``tick N`` every 20 ms, N counting up.

usage: py_ticker.py [--lock PATH] [--random-mib N]

Prints ``READY pid=PID thread=TID`` first (TID: a second thread, parked in a
sleep).  ``--lock PATH`` holds an flock(LOCK_EX) on PATH (created) for its
whole life; ``--random-mib N`` keeps N MiB of random bytes (a dump of them
takes a while, and compresses badly).
"""

import argparse
import fcntl
import os
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lock")
    ap.add_argument("--random-mib", type=int, default=0)
    args = ap.parse_args()
    keep = []
    if args.lock:
        fd = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        keep.append(fd)
    if args.random_mib:
        keep.append(os.urandom(args.random_mib << 20))
    tid = []
    started = threading.Event()

    def park() -> None:
        tid.append(threading.get_native_id())
        started.set()
        while True:
            time.sleep(3600)

    threading.Thread(target=park, daemon=True).start()
    started.wait()
    print(f"READY pid={os.getpid()} thread={tid[0]}", flush=True)
    n = 0
    while True:
        n += 1
        print(f"tick {n}", flush=True)
        time.sleep(0.02)


if __name__ == "__main__":
    main()
