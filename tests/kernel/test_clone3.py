"""clone3 in this process (set_tid for a chosen pid), the argument block for injection, and the
restore's helper creation (tree.create), which clones from a forked child: never hangs with busy threads."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import struct
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ckpt.errors import RestoreError
from ckpt.kernel import clone
from ckpt.resources import tree


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


@contextmanager
def _busy_python_threads(n: int = 2) -> Iterator[None]:
    """``n`` threads running Python bytecode (each asks for the GIL every switch interval)."""
    stop = threading.Event()

    def spin() -> None:
        k = 0
        while not stop.is_set():
            k += 1

    threads = [threading.Thread(target=spin) for _ in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # GIL requests 50 times as often: the race comes sooner, and the test runs faster
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)


def test_clone3_refuses_a_multi_threaded_caller() -> None:
    """Its copy could wait for the GIL for ever (ckpt.kernel.clone.clone3 says why): refused, nothing cloned."""
    with _busy_python_threads(1), pytest.raises(RuntimeError, match="2 threads"):
        _fork_like()


@pytest.mark.skipif(os.geteuid() != 0, reason="clone3 set_tid needs CAP_SYS_ADMIN")
def test_helper_creation_while_other_threads_run_python() -> None:
    """ckpt's real path (tree.create: os.fork, then clone3 there) with busy Python threads, 1000 times.

    A raw clone3 from this multi-threaded process hung 2 of 1,325 copies (and 2 of 3,000 here,
    in drop_gil: ceval_gil.h's FORCE_SWITCHING wait).  The helper reports within
    tree.CREATE_TIMEOUT or create() fails: that is the hang guard.  Foreground
    and detached in turn, each helper abandoned at once: its pid is free on return.
    """
    me_sid, me_pgid = os.getsid(0), os.getpgid(0)
    with _busy_python_threads(2):
        for i in range(1000):
            for _ in range(5):  # the pid may be taken between the check and the clone
                pid = _free_pid()
                lead = i % 3  # its own session, its own group, or ours
                plan = tree.Plan(pid, pid if lead < 2 else me_pgid, pid if lead == 0 else me_sid)
                try:
                    helper = tree.create(plan, detached=bool(i % 2))
                except RestoreError as exc:
                    assert "is taken" in str(exc), exc
                    continue
                break
            else:
                raise AssertionError("clone3(set_tid) kept hitting taken pids")
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            assert (int(fields[3]), int(fields[2])) == (plan.sid, plan.pgid)  # session, group
            assert int(fields[1]) == (os.getpid() if i % 2 == 0 else helper.mid)
            helper.reap([pid])
            assert not os.path.exists(f"/proc/{pid}"), f"helper {pid} left after reap (round {i})"
    assert tree._get_subreaper() is False  # put back
