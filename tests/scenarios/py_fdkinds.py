"""Descriptor kinds ckpt used to refuse, or refused only at restore: each set up, then checked by the process.

``py_fdkinds.py DIR KIND...`` sets up each KIND (DIR: a scratch directory of the test), prints
``READY pid=PID``, and on SIGUSR1 checks them all and prints ``PASS fdkinds KIND,...`` or
``FAIL fdkinds why; ...``.  A check may consume what it checks (a pipe's bytes): it is meant for once,
after the restore.

* ``halfpipe``: pipes whose other end is closed — a read end with bytes queued whose writer was closed
  (reads give the bytes, then end-of-file), a write end whose reader was closed (a write gives EPIPE), and
  a FIFO read end with bytes whose writer was closed;
* ``reopened``: both ends of a pipe opened a second time through /proc/self/fd/N — new open files on the
  same pipe with their own flags (the second read end non-blocking, the first not).
"""

import errno
import fcntl
import os
import signal
import sys
import time

scratch, kinds = sys.argv[1], sys.argv[2:]
checks: list = []


def setup_halfpipe() -> None:
    r, w = os.pipe()
    os.write(w, b"queued before the writer left")
    os.close(w)
    r2, w2 = os.pipe()
    os.close(r2)
    fifo = os.path.join(scratch, "fifo")
    os.mkfifo(fifo, 0o600)
    fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fw = os.open(fifo, os.O_WRONLY)
    os.write(fw, b"fifo bytes")
    os.close(fw)

    def check() -> list[str]:
        bad = []
        if os.read(r, 100) != b"queued before the writer left" or os.read(r, 100) != b"":
            bad.append("pipe read end: not its bytes then EOF")
        try:
            os.write(w2, b"x")
            bad.append("pipe write end: a write went through")
        except BrokenPipeError:
            pass
        if os.read(fr, 100) != b"fifo bytes" or os.read(fr, 100) != b"":
            bad.append("FIFO read end: not its bytes then EOF")
        return bad
    checks.append(check)


def setup_reopened() -> None:
    r, w = os.pipe()
    r2 = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)
    w2 = os.open(f"/proc/self/fd/{w}", os.O_WRONLY)
    os.write(w, b"first")

    def check() -> list[str]:
        bad = []
        if fcntl.fcntl(r, fcntl.F_GETFL) & os.O_NONBLOCK or not fcntl.fcntl(r2, fcntl.F_GETFL) & os.O_NONBLOCK:
            bad.append("reopened read end: O_NONBLOCK not its own")
        if len({os.fstat(fd).st_ino for fd in (r, w, r2, w2)}) != 1:
            bad.append("reopened ends: not one pipe")
        os.write(w2, b"+second")
        if os.read(r2, 100) != b"first+second":
            bad.append("reopened ends: bytes lost")
        try:
            os.read(r2, 1)
            bad.append("reopened read end: blocking")
        except BlockingIOError:
            pass
        return bad
    checks.append(check)


for kind in kinds:
    globals()[f"setup_{kind}"]()


def on_usr1(*_: object) -> None:
    bad = [why for check in checks for why in check()]
    print(f"FAIL fdkinds {'; '.join(bad)}" if bad else f"PASS fdkinds {','.join(kinds)}", flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
