"""Descriptor and thread state a restore used to drop silently, each checked by the process itself.

* a socketpair end with O_ASYNC|O_NONBLOCK, its SIGIO sent to the main thread (F_SETOWN_EX, F_OWNER_TID)
  as SIGRTMIN+2 (F_SETSIG); a pipe read end with O_ASYNC owned by the process (F_SETOWN);
* a file made with O_TMPFILE (tempfile.TemporaryFile) holding bytes, at an offset;
* a thread named ``fdstate-worker`` (prctl PR_SET_NAME), the main thread ``fdstate-main``;
* a page of anonymous memory written, then made read-only (VM_ACCOUNT kept).

Prints ``READY pid=PID``.  On SIGUSR1 it checks each and prints ``PASS fdstate round=N`` or ``FAIL ...``;
after the owner checks it writes to the socket's peer and waits for its SIGIO-turned-SIGRTMIN+2.
"""

import ctypes
import fcntl
import mmap
import os
import signal
import socket
import struct
import tempfile
import threading
import time

F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX = 10, 11, 15, 16
F_OWNER_TID, F_OWNER_PID = 0, 1
SIG = signal.SIGRTMIN + 2
libc = ctypes.CDLL(None, use_errno=True)


def set_name(name: bytes) -> None:
    libc.prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME


set_name(b"fdstate-main")
main_tid = threading.get_native_id()
a, b = socket.socketpair()
fcntl.fcntl(a.fileno(), fcntl.F_SETFL, fcntl.fcntl(a.fileno(), fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
fcntl.fcntl(a.fileno(), F_SETOWN_EX, struct.pack("<ii", F_OWNER_TID, main_tid))
fcntl.fcntl(a.fileno(), F_SETSIG, SIG)
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
tmp = tempfile.TemporaryFile()  # O_TMPFILE where the kernel has it
tmp.write(b"tmpfile-bytes" * 100)
tmp.flush()
os.lseek(tmp.fileno(), 7, os.SEEK_SET)
tmp_flags = fcntl.fcntl(tmp.fileno(), fcntl.F_GETFL)
ro = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
ro[:5] = b"ronly"
ro_addr = ctypes.addressof(ctypes.c_char.from_buffer(ro))
libc.mprotect(ctypes.c_void_p(ro_addr), 4096, 1)  # PROT_READ (the buffer export stays valid for reading)


def vmflags(addr: int) -> set[str]:
    lines = open("/proc/self/smaps").read().splitlines()
    hit = False
    for ln in lines:
        if ln and ln[0] in "0123456789abcdef" and "-" in ln.split()[0]:
            lo, hi = (int(x, 16) for x in ln.split()[0].split("-"))
            hit = lo <= addr < hi
        elif hit and ln.startswith("VmFlags:"):
            return set(ln.split()[1:])
    return set()


worker_tid = 0


def worker() -> None:
    global worker_tid
    set_name(b"fdstate-worker")
    worker_tid = threading.get_native_id()
    while True:
        time.sleep(1)


threading.Thread(target=worker, daemon=True).start()
while not worker_tid:
    time.sleep(0.01)
got: list[int] = []
signal.signal(SIG, lambda s, f: got.append(s))
rounds = 0


def comm(tid: int) -> str:
    return open(f"/proc/self/task/{tid}/comm").read().strip()


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    if not fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_ASYNC:
        bad.append("socket lost O_ASYNC")
    kind, owner = struct.unpack("<ii", fcntl.fcntl(a.fileno(), F_GETOWN_EX, bytes(8)))
    if (kind, owner) != (F_OWNER_TID, main_tid):
        bad.append(f"socket owner {(kind, owner)}")
    if fcntl.fcntl(a.fileno(), F_GETSIG) != SIG:
        bad.append(f"socket F_GETSIG {fcntl.fcntl(a.fileno(), F_GETSIG)}")
    if not fcntl.fcntl(r, fcntl.F_GETFL) & os.O_ASYNC or fcntl.fcntl(r, fcntl.F_GETOWN) != os.getpid():
        bad.append(f"pipe O_ASYNC/owner {fcntl.fcntl(r, fcntl.F_GETFL):o}/{fcntl.fcntl(r, fcntl.F_GETOWN)}")
    if fcntl.fcntl(tmp.fileno(), fcntl.F_GETFL) != tmp_flags:
        bad.append(f"tmpfile flags {fcntl.fcntl(tmp.fileno(), fcntl.F_GETFL):o}, were {tmp_flags:o}")
    if os.lseek(tmp.fileno(), 0, os.SEEK_CUR) != 7 or os.pread(tmp.fileno(), 13, 0) != b"tmpfile-bytes":
        bad.append("tmpfile offset or bytes")
    if (comm(main_tid), comm(worker_tid)) != ("fdstate-main", "fdstate-worker"):
        bad.append(f"thread names {comm(main_tid)!r}, {comm(worker_tid)!r}")
    if ro[:5] != b"ronly" or "ac" not in vmflags(ro_addr) or "wr" in vmflags(ro_addr):
        bad.append(f"read-only page {bytes(ro[:5])!r} {sorted(vmflags(ro_addr))}")
    got.clear()
    b.send(b"x")  # SIGIO of the socket, as SIG, to the main thread
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    a.recv(1)
    if got != [SIG]:
        bad.append(f"signals on input {got}")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS fdstate round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()}", flush=True)
while True:
    time.sleep(1)
