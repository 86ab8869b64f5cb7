"""Descriptors in flight: sent with SCM_RIGHTS on unix sockets and not received yet, held by no process.

The target (scenarios/scm_rights.c) leaves, in queues nobody reads: a regular file (offset 5, its sender's
copy closed), a pipe's read end and an eventfd (both in one message) on two stream socketpairs at once (the
same open files twice), a unix stream socket with its own queue on a datagram socketpair, and a memfd on a
seqpacket socketpair the other way.  Its one round reads them all and checks contents, message boundaries
(which bytes each descriptor comes with, as plain Linux delivers them), offsets, and that each descriptor is
the same open file as its other copies and as what the sender kept (the pipe's write end, the eventfd, the
socket's peer).

The ``test_in_flight_*`` tests are the proof that a dump keeps them: dumped and restored, left running, and
as the final delta of a pre-dump chain, the round must pass as it does without any checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image.reader import Image
from targets import Target, kill_all, tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _round(t: Target) -> str:
    os.kill(t.pid, signal.SIGUSR1)
    return t.expect("PASS", 30)


@pytest.fixture
def scm(c_target, tmp_path: Path) -> Iterator:  # noqa: ANN001
    """Start scenarios/scm_rights.c (its file in tmp_path/files): (target, [R, C]); both killed afterwards."""
    started: list[int] = []

    def start() -> tuple[Target, list[int]]:
        files = tmp_path / "files"
        files.mkdir(exist_ok=True)
        t = c_target("scm_rights", str(files), stderr=subprocess.DEVNULL)
        pids = [int(p) for p in t.ready()["pids"].split(",")]
        started.extend(pids)
        return t, pids

    yield start
    kill_all(started)


def test_round_trip_without_checkpoint(scm) -> None:  # noqa: ANN001
    """The target checks itself as plain Linux runs it (what the checkpointed ones must reproduce)."""
    t, _ = scm()
    assert _round(t) == "PASS scm_rights"


def _restore_and_check(t: Target, pids: list[int], image: Path, restored: list[int]) -> None:
    """Restore the image of the ended target; its one round must pass as without a checkpoint."""
    t.proc.returncode = -signal.SIGKILL  # the dump killed and reaped it
    r = api.restore(image, inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert sorted(r.processes) == sorted(pids) and all(tracer_of(p) == 0 for p in pids)
    assert _round(t) == "PASS scm_rights"


def test_in_flight_dump_restore(scm, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, pids = scm()
    stats = api.dump(t.pid, tmp_path / "img")
    assert stats.processes == 2
    # Each stream's queue is cut where the messages with descriptors start: 100 | 10+file | 50 | 3+pipe,eventfd.
    streams = [e.unix for e in Image.open(tmp_path / "img").file_entries()
               if e.HasField("unix") and e.unix.type == socket.SOCK_STREAM and e.unix.in_flight]
    assert len(streams) == 2
    for u in streams:
        assert [len(q) for q in u.queue] == [100, 10, 50, 3]
        assert [(f.index, len(f.file_ids)) for f in u.in_flight] == [(1, 1), (3, 2)]
    _restore_and_check(t, pids, tmp_path / "img", restored)


def test_in_flight_dump_leave_running(scm, tmp_path: Path) -> None:  # noqa: ANN001
    """The dump takes nothing from the queues (nor adds, nor re-orders) of the tree it leaves running."""
    t, pids = scm()
    stats = api.dump(t.pid, tmp_path / "img", leave_running=True)
    assert stats.processes == 2 and stats.left_running
    assert all(tracer_of(p) == 0 for p in pids)
    assert _round(t) == "PASS scm_rights"


def test_in_flight_dump_leave_running_then_dump_restore(scm, tmp_path: Path,  # noqa: ANN001
                                                        restored: list[int]) -> None:
    """A second dump finds the queues as the first one left them, and its image restores them."""
    t, pids = scm()
    api.dump(t.pid, tmp_path / "img1", leave_running=True)
    api.dump(t.pid, tmp_path / "img2")
    _restore_and_check(t, pids, tmp_path / "img2", restored)


def test_in_flight_pre_dump_then_final_delta(scm, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, pids = scm()
    first = api.pre_dump(t.pid, tmp_path / "p1")
    assert first.processes == 2
    final = api.dump_delta(t.pid, tmp_path / "final", prev_images_dir=tmp_path / "p1")
    assert final.processes == 2
    _restore_and_check(t, pids, tmp_path / "final", restored)


def test_in_flight_migrate_to_a_second_host(second_host, tmp_path: Path) -> None:  # noqa: ANN001
    """Live migration carries the descriptors in flight too (the destination restores the final image)."""
    from hosts import ckpt_argv
    from targets import build_c, wait_until
    from test_migrate import _free_port, _Receiver, _token

    host, port, token = second_host, _free_port(), _token(tmp_path)
    files, log = tmp_path / "files", tmp_path / "scm.log"
    files.mkdir()
    with open(log, "wb") as out:
        proc = subprocess.Popen([build_c("scm_rights"), str(files)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    pids = [proc.pid]
    try:
        wait_until(lambda: "READY" in log.read_text(), "the target is ready", timeout=10)
        pids = [int(p) for p in log.read_text().split("pids=")[1].split()[0].split(",")]
        rx = _Receiver(host, tmp_path, token, port)
        res = subprocess.run(ckpt_argv("migrate", "-t", pids[0], "--to", f"{host.address}:{port}",
                                       "--token-file", token),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)
        assert res.returncode == 0, res.stderr
        proc.wait(timeout=10)
        assert rx.result()["pid"] == pids[0]
        inside = {host.pid_inside(h): h for h in host.processes()}
        assert all(p in inside for p in pids), (pids, inside)
        n = len(log.read_text().splitlines())
        os.kill(inside[pids[0]], signal.SIGUSR1)
        wait_until(lambda: len(log.read_text().splitlines()) > n, "a verdict", timeout=30)
        assert log.read_text().splitlines()[n] == "PASS scm_rights", log.read_text()
    finally:
        kill_all(pids)
