"""Process trees: ``dump -t ROOT`` takes the root and every descendant; restore rebuilds them.

The target (scenarios/tree.c) is a root with children in its group, in another
group of its session, in a session of their own (with a grandchild), a thread,
and a zombie; pipes with buffered bytes between the root and each child, and
one regular file shared by all (one open file description: a shared offset).
After a restore every process checks its own pid, ppid, sid, pgid, memory and
pipe bytes, and the root reports PASS (scenarios/tree.c says how).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from ckpt import api
from ckpt.control.seize import freeze
from ckpt.errors import RestoreError, Unsupported
from ckpt.image.reader import Image
from ckpt.resources import sysvshm
from targets import Target, kill_all, tracer_of, wait_until
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _ids(pid: int) -> tuple[int, int, int, str]:
    """(ppid, pgid, sid, state) from /proc/PID/stat; a zombie's state is Z."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode()


def _shape(pids: list[int]) -> dict[int, tuple[int, int, int, bool]]:
    return {p: (*_ids(p)[:3], _ids(p)[3] == "Z") for p in pids}


@pytest.fixture
def tree_target(c_target, tmp_path: Path):  # noqa: ANN001, ANN201
    """(target, its pids: root, C1, C2, C3, G, C4, Z); every one of them is killed after the test."""
    started: list[list[int]] = []

    def start() -> tuple[Target, list[int]]:
        t = c_target("tree", str(tmp_path), stderr=subprocess.DEVNULL)
        pids = [int(p) for p in t.ready()["pids"].split(",")]
        started.append(pids)
        return t, pids

    yield start
    for pids in started:
        kill_all(pids)


def test_tree_round_trip_same_pids_sessions_groups_zombie(tree_target, tmp_path: Path,  # noqa: ANN001
                                                           restored: list[int]) -> None:
    t, pids = tree_target()
    root = pids[0]
    before = _shape(pids)
    assert before[pids[-1]][3], "Z is a zombie before the dump"

    stats = api.dump(root, tmp_path / "img")
    assert (stats.processes, stats.zombies, stats.threads) == (6, 1, 7)
    _forget(t)
    img = Image.open(tmp_path / "img")
    assert sorted(p.pid for p in img.processes) == sorted(pids)
    assert api.verify(tmp_path / "img").ok
    assert f"process {pids[-1]} (ppid {root}, pgid {root}, sid {root}), zombie (tree, exit 7)" in api.show(tmp_path / "img")

    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == root and sorted(r.processes) == sorted(pids)
    assert _shape(pids) == before  # same parents, groups, sessions; Z a zombie again
    assert all(tracer_of(p) == 0 for p in pids[:-1])
    os.kill(root, signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS tree 7 processes round=1")  # pipes, memory, offset, zombie's status

    # The restored tree is a tree like any other: again (the zombie was reaped by round 1).
    stats = api.dump(root, tmp_path / "img2")
    assert (stats.processes, stats.zombies) == (6, 0)
    r = api.restore(tmp_path / "img2", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(root, signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS tree 7 processes round=2")


def test_tree_dump_leave_running(tree_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, pids = tree_target()
    before = _shape(pids)
    stats = api.dump(pids[0], tmp_path / "img", leave_running=True)
    assert stats.processes == 6 and stats.left_running
    assert _shape(pids) == before and all(tracer_of(p) == 0 for p in pids[:-1])
    os.kill(pids[0], signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS tree")  # the pipes' bytes were put back


def test_tree_pre_dumps_then_final_delta(tree_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Every live process of the tree is tracked: pre-dumps copy only what changed, the final dump is a delta."""
    t, pids = tree_target()
    root, live = pids[0], sorted(pids[:-1])
    first = api.pre_dump(root, tmp_path / "p1")
    assert first.full and first.processes == 6
    img = Image.open(tmp_path / "p1")
    assert sorted(p.pid for p in img.processes if not p.zombie) == live
    assert all(p.tracking for p in img.processes if not p.zombie)
    assert [p.pid for p in img.processes if p.zombie] == [pids[-1]]  # recorded for a staged restore
    second = api.pre_dump(root, tmp_path / "p2", prev_images_dir=tmp_path / "p1")
    assert not second.full and second.processes == 6, second.notes
    assert second.pages_stored < first.pages_stored and second.pages_parent > 0
    final = api.dump_delta(root, tmp_path / "final", prev_images_dir=tmp_path / "p2")
    assert final.processes == 6 and final.zombies == 1
    assert Image.open(tmp_path / "final").parent is not None
    assert api.verify(tmp_path / "final").ok
    _forget(t)
    assert all(not os.path.exists(f"/run/ckpt/track-{p}.json") for p in live)  # tracking ended with the dump
    r = api.restore(tmp_path / "final", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert all(tracer_of(p) == 0 for p in live)
    os.kill(root, signal.SIGUSR1)
    assert t.expect("PASS").startswith("PASS tree 7 processes round=1")


def test_shared_anonymous_memory_stays_shared(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = py_target("py_shared_anon.py", stderr=subprocess.DEVNULL)
    child = int(t.ready()["child"])
    try:
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("PASS") == "PASS shared round=1"
        stats = api.dump(t.pid, tmp_path / "img")
        assert stats.processes == 2
        _forget(t)
        img = Image.open(tmp_path / "img")
        shmem = [o for o in img.owners() if str(o).startswith("shmem-")]
        assert len(shmem) == 1  # stored once, not per process
        assert api.verify(tmp_path / "img").ok
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        assert _ids(child)[0] == t.pid
        os.kill(t.pid, signal.SIGUSR1)  # both offsets kept (one written by each), and still one object
        assert t.expect("PASS") == "PASS shared round=2"
    finally:
        kill_all([child])


def test_memfd_shared_by_fd_and_mapping_stays_one_object(py_target, tmp_path: Path,  # noqa: ANN001
                                                         restored: list[int]) -> None:
    t = py_target("py_memfd.py", stderr=subprocess.DEVNULL)
    child = int(t.ready()["child"])
    try:
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("PASS") == "PASS memfd round=1"
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        assert [o for o in Image.open(tmp_path / "img").owners() if o.startswith("memfd-")]  # stored once
        assert api.verify(tmp_path / "img").ok
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        os.kill(t.pid, signal.SIGUSR1)  # name, size, seals, content, and parent and child on one object
        assert t.expect("PASS") == "PASS memfd round=2"
    finally:
        kill_all([child])


def test_sysv_shared_memory_between_processes(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    key = 0x636B0000 + os.getpid() % 0xFFFF
    t = py_target("py_sysv.py", str(key), stderr=subprocess.DEVNULL)
    ready = t.ready()
    child, a_id, b_id = int(ready["child"]), int(ready["a"]), int(ready["b"])
    try:
        os.kill(t.pid, signal.SIGUSR1)
        assert t.expect("PASS") == "PASS sysv round=1"
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        # By its shmid column: ids count from 0 in a fresh IPC namespace, and " 0 " is in every line (uid 0).
        wait_until(lambda: a_id not in sysvshm.read_segments(), "the removed segment goes with its last attach")
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        os.kill(t.pid, signal.SIGUSR1)  # A made again with its id and bytes (and removed again), B as it was
        assert t.expect("PASS") == "PASS sysv round=2"
    finally:
        kill_all([child])
        subprocess.run(["ipcrm", "-m", str(b_id)], capture_output=True, close_fds=True)


def test_fifo_between_processes_keeps_its_bytes(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = py_target("py_fifo_tree.py", str(tmp_path / "fifo"), stderr=subprocess.DEVNULL)
    child = int(t.ready()["child"])
    try:
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        os.kill(t.pid, signal.SIGUSR1)  # the child's 3000 bytes, once, then a new write of the child
        assert t.expect("PASS") == "PASS fifo"
    finally:
        kill_all([child])


def test_zombies_keep_their_names_and_wait_statuses(py_target, tmp_path: Path,  # noqa: ANN001
                                                    restored: list[int]) -> None:
    """Zombies that exited, died of a caught-by-default signal and of SIGKILL; no SIGCHLD made up for them."""
    t = py_target("py_zombies.py", stderr=subprocess.DEVNULL)
    zombies = [int(z) for z in t.ready()["zombies"].split(",")]
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert list(r.processes) == [t.pid, *zombies]
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS zombies"


def test_zombies_restored_by_a_restorer_that_ignores_sigchld(py_target, tmp_path: Path,  # noqa: ANN001
                                                            restored: list[int]) -> None:
    """A restorer started with SIGCHLD ignored (inherited across exec) passes that to its helpers: the
    zombies' parent takes SIGCHLD back to SIG_DFL first, or the kernel would reap them at once."""
    t = py_target("py_zombies.py", stderr=subprocess.DEVNULL)
    zombies = [int(z) for z in t.ready()["zombies"].split(",")]
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    out = t.stdio_fds[1]
    code = ("import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); from ckpt import api; "
            "print(api.restore(sys.argv[1], detached=True, inherit_fds={1: int(sys.argv[2])}).pid)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "img"), str(out)], pass_fds=(out,),
                         capture_output=True, text=True, timeout=60, close_fds=True)
    assert res.returncode == 0, res.stderr
    restored.append(int(res.stdout))
    assert all(_ids(z)[3] == "Z" for z in zombies)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS zombies"


def test_shared_descriptor_table_stays_shared(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = c_target("clone_files")
    child = int(t.ready()["child"])
    try:
        os.kill(t.pid, signal.SIGUSR1)  # the parent opens fd 41, the child sees it
        assert t.expect("PASS") == "PASS files 1"
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        assert [p.shares_files for p in Image.open(tmp_path / "img").processes] == [False, True]
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        os.kill(t.pid, signal.SIGUSR1)  # fd 42, opened by the restored parent, is in the restored child's table
        assert t.expect("PASS") == "PASS files 2"
    finally:
        kill_all([child])


def test_shared_fs_is_refused_and_both_run_on(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t = c_target("clone_files", "fs")
    child = int(t.ready()["child"])
    try:
        with pytest.raises(Unsupported, match=rf"process {child} shares its cwd and root \(CLONE_FS\) "
                                              rf"with its parent {t.pid}"):
            api.dump(t.pid, tmp_path / "img")
        assert not (tmp_path / "img").exists()
        assert t.alive() and tracer_of(t.pid) == 0 and tracer_of(child) == 0
        wait_until(lambda: _ids(child)[3] == "S", "the child waits again")
    finally:
        kill_all([child])


def test_restore_fails_cleanly_when_a_childs_pid_is_taken(tree_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, pids = tree_target()
    api.dump(pids[0], tmp_path / "img", leave_running=True)
    alive = pids[1:-1]
    # Frozen under ptrace (not SIGSTOPped: a stopped group orphaned by its root's death gets SIGHUP),
    # the children outlive their root for a moment and hold their pids.
    with ExitStack() as frozen:
        for p in alive:
            frozen.enter_context(freeze(p))
        t.close()  # the root only
        with pytest.raises(RestoreError, match=rf"pid ({'|'.join(map(str, alive))}) is taken"):
            api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        # What the restore created is gone again: the root's pid is free.
        wait_until(lambda: not os.path.exists(f"/proc/{pids[0]}"), "the root's pid is free")
        assert all(os.path.exists(f"/proc/{p}") for p in alive)


def test_migrate_a_tree_to_a_second_host(second_host, tmp_path: Path) -> None:  # noqa: ANN001
    """The whole tree moves: pre-copy rounds track every process, the destination stages every one."""
    from hosts import ckpt_argv
    from test_migrate import _free_port, _Receiver, _token
    from targets import build_c

    host, port, token = second_host, _free_port(), _token(tmp_path)
    log = tmp_path / "tree.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([build_c("tree"), str(tmp_path)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    try:
        wait_until(lambda: "READY" in log.read_text(), "the tree is ready")
        pids = [int(p) for p in log.read_text().split("pids=")[1].split()[0].split(",")]
        rx = _Receiver(host, tmp_path, token, port)
        res = subprocess.run(ckpt_argv("migrate", "-t", pids[0], "--to", f"{host.address}:{port}",
                                       "--token-file", token, "-v"),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)
        assert res.returncode == 0, res.stderr
        proc.wait(timeout=10)  # the source tree ended once the destination ran it
        result = rx.result()
        assert result["pid"] == pids[0] and result["staged"], result  # every process staged, the zombie too
        inside = {host.pid_inside(h): h for h in host.processes()}
        assert all(p in inside for p in pids), (pids, inside)
        n = len(log.read_text().splitlines())
        os.kill(inside[pids[0]], signal.SIGUSR1)
        wait_until(lambda: len(log.read_text().splitlines()) > n, "a verdict")
        assert log.read_text().splitlines()[n].startswith("PASS tree 7 processes round=1"), log.read_text()
    finally:
        kill_all(pids if "pids" in locals() else [proc.pid])


def test_zombies_keep_their_process_group_and_session(py_target, tmp_path: Path,  # noqa: ANN001
                                                      restored: list[int]) -> None:
    """A zombie that had joined a sibling's group, one that led its own group and one that led a session
    come back in them (scenarios/py_zombie_groups.py checks, after the restore, then reaps them)."""
    t = py_target("py_zombie_groups.py", stderr=subprocess.DEVNULL)
    ids = t.ready()
    pids = [t.pid, int(ids["lead"]), *map(int, ids["zombies"].split(","))]
    try:
        api.dump(t.pid, tmp_path / "img")
        _forget(t)
        r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
        restored.append(r.pid)
        os.kill(r.pid, signal.SIGUSR1)
        line = t.expect("PASS")
        assert line == "PASS", line
    finally:
        kill_all(pids)
