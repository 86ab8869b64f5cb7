"""System V shared memory between a parent and its child.

Segment A (IPC_PRIVATE, 16 KiB) is removed (IPC_RMID) while both keep it
attached: it lives until their last detach, so a dump that ends them ends it
too and the restore must create it again, with its id.  Segment B (key
``argv[1]``, 8 KiB) is left in place.  Prints ``READY pid=PARENT child=CHILD
a=SHMID b=SHMID``.  On SIGUSR1 the parent checks both segments' bytes (its own
and the child's), that A still has its id, 2 attaches and SHM_DEST, pings
the child through A and waits for its answer: PASS or FAIL.
"""

import ctypes
import os
import signal
import sys
import time

from pingpong import fork_child, ping

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_CREAT, IPC_RMID, IPC_STAT, SHM_DEST = 0o1000, 0, 2, 0o1000


def attach(shmid: int) -> int:
    addr = libc.shmat(shmid, None, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    return addr


def stat(shmid: int) -> tuple[int, int]:
    """(nattch, mode) of a segment; (-1, 0) if it is gone."""
    buf = ctypes.create_string_buffer(128)
    if libc.shmctl(shmid, IPC_STAT, buf) != 0:
        return -1, 0
    mode = int.from_bytes(buf.raw[20:22], "little")  # shm_perm.mode
    return int.from_bytes(buf.raw[88:96], "little"), mode  # shm_nattch


a_id = libc.shmget(0, 16384, IPC_CREAT | 0o600)
b_id = libc.shmget(int(sys.argv[1]), 8192, IPC_CREAT | 0o600)
a, b = attach(a_id), attach(b_id)
ctypes.memmove(a, b"parent-a", 8)
ctypes.memmove(b, b"parent-b", 8)


def read(offset: int, n: int) -> bytes:  # segment A
    return ctypes.string_at(a + offset, n)


def write(offset: int, data: bytes) -> None:
    ctypes.memmove(a + offset, data, len(data))


def child_writes() -> None:
    write(4096, b"child-a")
    ctypes.memmove(b + 4096, b"child-b", 7)


child = fork_child(read, write, 8192, 12288, setup=child_writes)
libc.shmctl(a_id, IPC_RMID, None)
rounds = 0


def check(*_: object) -> None:
    global rounds
    rounds += 1
    bad = []
    for where, want in ((a, b"parent-a"), (a + 4096, b"child-a"), (b, b"parent-b"), (b + 4096, b"child-b")):
        if ctypes.string_at(where, len(want)) != want:
            bad.append(f"{want!r} lost: {ctypes.string_at(where, len(want))!r}")
    nattch, mode = stat(a_id)
    if nattch != 2 or not mode & SHM_DEST:
        bad.append(f"segment {a_id}: {nattch} attaches, mode {mode:o}")
    if ping(child, rounds, write, 8192, read, 12288) is not None:
        bad.append("no pong through segment A")
    print(f"FAIL {'; '.join(bad)}" if bad else f"PASS sysv round={rounds}", flush=True)


signal.signal(signal.SIGUSR1, check)
print(f"READY pid={os.getpid()} child={child} a={a_id} b={b_id}", flush=True)
while True:
    time.sleep(1)
