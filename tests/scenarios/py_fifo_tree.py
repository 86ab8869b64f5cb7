"""A FIFO between a parent (reader) and its child (writer), with bytes buffered in it.

``py_fifo_tree.py PATH``: makes the FIFO at PATH, forks; the child writes 3000
bytes the parent leaves unread.  Prints ``READY pid=PARENT child=CHILD``.  On
SIGUSR1 the parent reads exactly those bytes, asks the child (SIGUSR1) for
``more``, reads it from the FIFO too, and prints PASS or FAIL.
"""

import fcntl
import os
import select
import signal
import sys
import termios
import time

path = sys.argv[1]
os.mkfifo(path, 0o600)
BUFFERED = bytes(i % 251 for i in range(3000))
rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
child = os.fork()
if child == 0:
    os.close(rfd)
    wfd = os.open(path, os.O_WRONLY)
    signal.signal(signal.SIGUSR1, lambda *_: os.write(wfd, b"more"))
    os.write(wfd, BUFFERED)
    while True:
        time.sleep(1)


def read_exactly(n: int) -> bytes:
    out = b""
    deadline = time.monotonic() + 3
    while len(out) < n and time.monotonic() < deadline:
        if select.select([rfd], [], [], 0.1)[0]:
            out += os.read(rfd, n - len(out))
    return out


def check(*_: object) -> None:
    got = read_exactly(len(BUFFERED))
    os.kill(child, signal.SIGUSR1)
    more = read_exactly(4)
    ok = got == BUFFERED and more == b"more"
    print("PASS fifo" if ok else f"FAIL fifo got {len(got)} bytes (want {len(BUFFERED)}), then {more!r}", flush=True)


while int.from_bytes(fcntl.ioctl(rfd, termios.FIONREAD, bytes(4)), "little") < len(BUFFERED):
    time.sleep(0.01)  # until the child's bytes are in the FIFO
signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child}", flush=True)
while True:
    time.sleep(1)
