"""File locks through a dump and a restore: POSIX, OFD and flock locks and leases, waiters, and sqlite3.

Every restore here runs the self-check (the fdinfo ``lock:`` lines of each
process must come back), and the targets check the locks themselves from a
process that holds none (scenarios/locks.c, scenarios/py_sqlite.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.reader import Image
from ckpt.kernel.arch_x86_64 import NR
from ckpt.resources import locks
from targets import Target, kill_all, wait_in_syscall, wait_until
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _pids(t: Target) -> list[int]:
    return [int(p) for p in t.ready()["pids"].split(",")]


def _proc_locks() -> list[str]:
    with open("/proc/locks") as f:
        return f.read().splitlines()


def _image_locks(img: Path) -> dict[int, list[str]]:
    """Per process, the locks the image records, described (``POSIX write lock on bytes 0-9`` …)."""
    image = Image.open(img)
    return {p.pid: sorted(locks.describe(lk) for f in image.fds(p.pid) for lk in f.locks) for p in image.processes}


@pytest.fixture
def locks_tree(c_target, tmp_path: Path):  # noqa: ANN001, ANN201
    """``start(mode)`` runs scenarios/locks.c MODE on TMP/files: (target, its pids, the directory); every
    process of it is killed after the test."""
    started: list[int] = []

    def start(mode: str) -> tuple[Target, list[int], Path]:
        data = tmp_path / "files"
        data.mkdir(exist_ok=True)
        t = c_target("locks", mode, str(data), stderr=subprocess.DEVNULL)
        pids = _pids(t)
        started.extend(pids)
        return t, pids, data

    yield start
    kill_all(started)


def _waiting(*pids: int) -> int:
    """How many of ``pids`` /proc/locks shows blocked on a lock (``->`` lines)."""
    return sum("->" in line and any(f" {p} " in line for p in pids) for line in _proc_locks())


def test_every_kind_of_lock_round_trips_in_a_parent_and_its_child(locks_tree, tmp_path: Path,  # noqa: ANN001
                                                                 restored: list[int]) -> None:
    t, (parent, child), _ = locks_tree("hold")
    api.dump(parent, tmp_path / "img")
    _forget(t)
    assert _image_locks(tmp_path / "img") == {
        parent: ["OFD write lock on bytes 200-209", "POSIX read lock on bytes 500-EOF",
                 "POSIX write lock on bytes 0-9", "flock exclusive lock", "read lease", "write lease"],
        child: ["OFD read lock on bytes 400-409", "POSIX write lock on bytes 300-309"],
    }
    assert not any(f" {p} " in line for line in _proc_locks() for p in (parent, child)), "the dump ended the tree"
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(parent, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS"


def test_waiters_come_back_waiting_and_get_the_lock_when_it_is_released(locks_tree, tmp_path: Path,  # noqa: ANN001
                                                                        restored: list[int]) -> None:
    t, (parent, posix_waiter, flock_waiter), _ = locks_tree("wait")
    wait_in_syscall(posix_waiter, posix_waiter, NR.fcntl)
    wait_in_syscall(flock_waiter, flock_waiter, NR.flock)
    assert _waiting(posix_waiter, flock_waiter) == 2
    api.dump(parent, tmp_path / "img")
    _forget(t)
    assert _image_locks(tmp_path / "img") == {parent: ["POSIX write lock on bytes 0-9", "flock exclusive lock"],
                                              posix_waiter: [], flock_waiter: []}
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    # Back in their calls, waiting on the restored holder again (the "->" lines of /proc/locks).
    wait_in_syscall(posix_waiter, posix_waiter, NR.fcntl)
    wait_in_syscall(flock_waiter, flock_waiter, NR.flock)
    wait_until(lambda: _waiting(posix_waiter, flock_waiter) == 2, "both waiters are blocked on the locks again")
    os.kill(parent, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS"


def test_a_waiter_on_a_holder_outside_the_tree_comes_back_waiting(c_target, tmp_path: Path,  # noqa: ANN001
                                                                  restored: list[int]) -> None:
    path = tmp_path / "outside"
    path.write_bytes(b"x" * 100)
    holder = c_target("locks", "holdone", str(path), stderr=subprocess.DEVNULL)  # outside the dumped tree
    hpid = int(holder.ready()["pid"])
    t = c_target("locks", "waitext", str(path), stderr=subprocess.DEVNULL)
    pid = int(t.ready()["pid"])
    wait_in_syscall(pid, pid, NR.fcntl)
    api.dump(pid, tmp_path / "img")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    wait_in_syscall(pid, pid, NR.fcntl)
    wait_until(lambda: _waiting(pid) == 1, "the restored waiter is blocked on the outside holder's lock")
    os.kill(hpid, signal.SIGUSR1)
    assert holder.expect("RELEASED") == "RELEASED"
    assert t.expect("GOT") == "GOT"
    assert t.expect("PASS") == "PASS"


def _dumped(locks_tree, img: Path) -> tuple[Target, list[int], Path]:  # noqa: ANN001
    """scenarios/locks.c hold, dumped into ``img`` (which ends it)."""
    t, pids, data = locks_tree("hold")
    api.dump(pids[0], img)
    _forget(t)
    return t, pids, data


def test_a_lock_taken_by_another_process_since_the_dump_fails_the_restore(locks_tree, c_target,  # noqa: ANN001
                                                                         tmp_path: Path) -> None:
    t, pids, data = _dumped(locks_tree, tmp_path / "img")
    other = c_target("locks", "holdone", str(data / "data"), stderr=subprocess.DEVNULL)
    opid = int(other.ready()["pid"])
    with pytest.raises(RestoreError, match=rf"fd \d+ \(.*/data\): cannot take its POSIX write lock on bytes "
                                           rf"0-9 again: it is held by process {opid} \(POSIX write 0-9\)"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    for p in pids:  # nothing left under the pids
        assert not os.path.exists(f"/proc/{p}")


def test_a_lease_being_broken_is_refused_and_the_target_runs_on(locks_tree, tmp_path: Path) -> None:  # noqa: ANN001
    t, pids, data = locks_tree("hold")
    with pytest.raises(OSError):  # a writer's open breaks the read lease (and, non-blocking, gives up)
        os.open(data / "lease", os.O_WRONLY | os.O_NONBLOCK)
    assert any("LEASE  BREAKING" in line and f" {pids[0]} " in line for line in _proc_locks()), _proc_locks()
    with pytest.raises(Unsupported, match=rf"process {pids[0]}: fd \d+ \(.*/lease\) holds a lease being broken"):
        api.dump(pids[0], tmp_path / "img")
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    assert not (tmp_path / "img").exists()


def test_the_self_check_fails_a_restore_that_lost_a_lock(locks_tree, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    t, pids, _ = _dumped(locks_tree, tmp_path / "img")
    take = locks._take

    def all_but_flock(inj, s, fd, lock):  # noqa: ANN001, ANN202
        if lock.kind != lock.FLOCK:
            take(inj, s, fd, lock)

    monkeypatch.setattr(locks, "_take", all_but_flock)
    with pytest.raises(RestoreError, match=r"came back different from the dump: fdinfo/\d+: lock: "
                                           r"'FLOCK ADVISORY WRITE \* 0 EOF' at the dump, absent after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    for p in pids:
        assert not os.path.exists(f"/proc/{p}")


def test_sqlite_write_transaction_keeps_the_second_writer_out_until_it_commits(  # noqa: ANN001
        py_target, tmp_path: Path, restored: list[int]) -> None:
    db = tmp_path / "db.sqlite"
    t = py_target("py_sqlite.py", str(db), stderr=subprocess.DEVNULL)
    first, second = pids = _pids(t)
    try:
        api.dump(first, tmp_path / "img")
        _forget(t)
        held = _image_locks(tmp_path / "img")[first]
        assert "POSIX write lock on bytes 1073741825-1073741825" in held, held  # sqlite's RESERVED byte
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        # A writer from outside the tree is kept out as well: the restored transaction holds its lock.
        outsider = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                outsider.execute("BEGIN IMMEDIATE")
        finally:
            outsider.close()
        os.kill(first, signal.SIGUSR1)
        assert t.expect("PASS") == "PASS"
    finally:
        kill_all(pids)
