"""clone3 in this process (set_tid for a chosen pid) and the argument block for injection."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import struct

import pytest

from ckpt.kernel import clone


def test_clone_args_bytes_layout() -> None:
    blob = clone.clone_args_bytes(clone.CLONE_VM | clone.CLONE_THREAD, tls=0x7000, set_tid=[4321, 77], at=0x10000)
    size = ctypes.sizeof(clone.clone_args)
    assert size == clone.CLONE_ARGS_SIZE_VER2 == 88
    args = clone.clone_args.from_buffer_copy(blob[:size])
    assert args.flags == clone.CLONE_VM | clone.CLONE_THREAD and args.tls == 0x7000
    assert (args.set_tid, args.set_tid_size) == (0x10000 + size, 2)
    assert struct.unpack("<2i", blob[size:]) == (4321, 77)
    assert len(clone.clone_args_bytes(0)) == size  # no set_tid: no array, null pointer
    with pytest.raises(ValueError):
        clone.clone_args_bytes(0, set_tid=[1] * 33)


def _fork_like(set_tid=()) -> int:
    pid = clone.clone3(set_tid=set_tid)
    if pid == 0:
        os._exit(7)  # the child: a raw copy of this interpreter, leave at once
    return pid


def test_clone3_child_exits_and_is_reaped() -> None:
    pid = _fork_like()
    assert os.waitpid(pid, 0) == (pid, 7 << 8)


def _free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for _ in range(1000):
        pid = random.randrange(pid_max // 2, pid_max)
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid found")


def test_clone3_set_tid_gives_the_chosen_pid() -> None:
    for _ in range(5):  # the pid may be taken between the check and clone3
        want = _free_pid()
        try:
            pid = _fork_like(set_tid=[want])
        except FileExistsError:
            continue
        assert pid == want
        assert os.waitpid(pid, 0) == (pid, 7 << 8)
        return
    raise AssertionError("clone3(set_tid) kept hitting taken pids")


def test_clone3_set_tid_taken_pid_is_eexist() -> None:
    with pytest.raises(OSError) as exc:
        _fork_like(set_tid=[os.getpid()])
    assert exc.value.errno == errno.EEXIST
    assert "clone3" in str(exc.value)


def test_clone3_while_other_threads_run_python() -> None:
    """The child must not wait for a GIL another thread held at the clone (it would wait for ever):
    clone3 keeps the GIL through the syscall.  Busy Python threads make the race near certain."""
    import threading
    import time

    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    threads = [threading.Thread(target=spin) for _ in range(2)]
    for t in threads:
        t.start()
    stuck: list[int] = []
    try:
        for _ in range(30):
            pid = _fork_like()
            deadline = time.monotonic() + 5
            while (got := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.001)
            if got == (0, 0):
                stuck.append(pid)
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                break
            else:
                assert got == (pid, 7 << 8)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert stuck == [], "a clone3 child never reached os._exit (it waits for the GIL)"
