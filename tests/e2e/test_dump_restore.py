"""Dump and restore real processes with the same pid and tids: memory, threads and every process resource.

The target (scenarios/cr_target.c) checks its own memory, the widest vector
registers the CPU has (AVX-512 zmm and opmask, else AVX ymm, else SSE xmm),
MXCSR and thread ids for ever and writes PASS/FAIL into a result file.  A new
PASS line written after the restore, with a round counter that went on
counting, proves the restored process runs on the saved state.  SIGUSR1 then
makes it check its process-wide state — fds and offsets, an internal pipe's
bytes, cwd, rlimits, handlers, a SIGUSR2 left pending and blocked across the
checkpoint — and answer on its stdout pipe, which the test hands back to the
restore (``inherit_fds``), like a shell's pipe with CRIU's --inherit-fd.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckpt.dump import PROCESS_DUMPERS, dump, restore
from ckpt.errors import CkptError, RestoreError, TargetGone, Unsupported
from ckpt.image.pb import core_pb2
from ckpt.image.reader import Image
from ckpt.kernel.arch_x86_64 import NR
from ckpt.progress import ProgressEvent
from targets import HANG_GUARD, Target, spawn, tracer_of, vector_kind, wait_in_syscall, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _parse(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _drain(t: Target) -> None:
    """Drop the lines already waiting in the target's stdout pipe: the next one read is fresh."""
    fd = t.proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 1 << 16):
            break
    t._buf = b""


def _result(t: Target, fresh: bool = False, timeout: float = HANG_GUARD) -> dict[str, str]:
    """The next PASS line on the target's stdout (after the ones already written, if ``fresh``)."""
    if fresh:
        _drain(t)
    return _parse(t.expect("PASS", timeout))


def _start(c_target, tmp_path: Path, nthreads: int, blocked: bool) -> tuple[Target, Path]:  # noqa: ANN001
    result = tmp_path / "result"
    args = [str(result), str(nthreads)] + (["blocked"] if blocked else [])
    t = c_target("cr_target", *args, stdin_pipe=True, stderr=subprocess.DEVNULL)
    assert t.ready()["vec"] == vector_kind(), "cr_target does not hold the widest registers the CPU has"
    _result(t)
    return t, result


def _forget(t: Target) -> None:
    """The dump killed and reaped the target: keep Popen from ever waiting on the pid again (it is reused)."""
    t.proc.returncode = -signal.SIGKILL


def _tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _session(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[3])


def _queue_blocked_usr2(pid: int) -> None:
    """One SIGUSR2 (blocked by every thread) left in the shared queue: the image must carry it."""
    os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: int(_status(pid, "ShdPnd"), 16) & (1 << (signal.SIGUSR2 - 1)), "SIGUSR2 is pending")


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
@pytest.mark.parametrize("nthreads,blocked", [(0, False), (8, False), (2, True)], ids=["single", "8threads", "blocked"])
def test_dump_restore_same_pid(c_target, tmp_path: Path, restored: list[int], nthreads: int, blocked: bool,  # noqa: ANN001
                               leave_running: bool) -> None:
    t, result = _start(c_target, tmp_path, nthreads, blocked)
    pid = t.pid
    before = _result(t)
    tids_before = _tids(pid)
    assert len(tids_before) == 1 + nthreads + (2 if blocked else 0)
    _queue_blocked_usr2(pid)
    if leave_running:
        first = dump(pid, tmp_path / "img1", leave_running=True)
        assert first.left_running and tracer_of(pid) == 0
        mid = _result(t, fresh=True)  # still running and still checking itself
        assert int(mid["round"]) > int(before["round"])
        with pytest.raises(RestoreError, match="taken"):  # the pid is still in use
            restore(tmp_path / "img1", inherit_fds=t.stdio_fds)
        stats = dump(pid, tmp_path / "img2", leave_running=True)  # a second dump of the same live process
        image = tmp_path / "img2"
        os.kill(pid, signal.SIGKILL)  # now end it ourselves (keeping our pipe ends); the restore waits for the pid
        t.proc.wait(timeout=10)
    else:
        stats = dump(pid, tmp_path / "img")
        image = tmp_path / "img"
        _forget(t)
        assert not os.path.exists(f"/proc/{pid}")
    assert stats.threads == len(tids_before) and stats.pages_stored >= (64 << 20) // 4096
    assert Image.open(image).verify() == []
    _drain(t)

    r = restore(image, inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    assert r.pid == pid and list(r.tids) == [pid] + sorted(x for x in tids_before if x != pid)
    after = _result(t)
    assert after["pid"] == str(pid)
    assert sorted(int(x) for x in after["tids"].split(",")) == tids_before  # gettid() of each thread
    assert _tids(pid) == tids_before
    assert int(after["round"]) > int(before["round"])  # memory (the round counter) carried over
    assert tracer_of(pid) == 0
    assert _session(pid) == pid  # started with setsid: still a session leader
    if nthreads:
        counters = [int(c) for c in after["counters"].split(",")]
        wait_until(lambda: all(int(c) > o for c, o in zip(_result(t)["counters"].split(","), counters)),
                   "every worker thread makes progress after the restore")
    if blocked:
        # nanosleep seized with -ERESTART_RESTARTBLOCK: issued again, the thread sleeps on without an EINTR
        # (resources/blocked.py); read() seized with -ERESTARTSYS: run again on the restored stdin pipe, and gets
        # what we write now.  After a first dump -R the second one sees restart_syscall: resumed too when the
        # code before rip tells the call (glibc's inline clock_nanosleep does), else EINTR.
        sleep_tid = int(after["tids"].split(",")[-1])
        sleeping = next(c.syscall for c in Image.open(image).threads(pid) if c.tid == sleep_tid)
        assert sleeping.resume == core_pb2.SyscallState.REISSUE or leave_running, sleeping
        eintr = int(before["eintr"]) + (sleeping.resume == core_pb2.SyscallState.EINTR)
        wait_in_syscall(pid, sleep_tid, NR.clock_nanosleep)  # glibc's nanosleep() is clock_nanosleep(2)
        assert _result(t)["readres"] == "-2"  # still blocked in read(), not failed
        t.write(b"after-restore-42")
        wait_until(lambda: _result(t)["readres"] != "-2", "the blocked read() returns")
        final = _result(t)
        assert (final["readres"], final["readbuf"]) == ("16", "after-restore-42")
        assert int(final["eintr"]) == eintr
    os.kill(pid, signal.SIGUSR1)  # the handler survived; the main loop checks fds, cwd, limits, pending SIGUSR2
    check = _parse(t.expect("CHECK"))
    assert check["threads"] == str(len(tids_before)) and check["usr2"] == "1"
    assert stats.frozen_seconds > 0  # how long: bench/, not a bound here (a TCG guest beside a make test took 2.1-2.8 s)


def _no_image_left(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith((".img", "img"))] == []


def test_dump_interrupted_leaves_target_running(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 2, False)

    def interrupt(ev: ProgressEvent) -> None:
        if ev.phase == "memory":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dump(t.pid, tmp_path / "img", progress=interrupt)
    _no_image_left(tmp_path)
    assert t.alive() and tracer_of(t.pid) == 0
    _result(t, fresh=True)  # still running, still consistent


def test_dump_target_killed_meanwhile(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, _ = _start(c_target, tmp_path, 2, False)

    killed: list[bool] = []

    def kill(ev: ProgressEvent) -> None:
        if ev.phase == "memory" and not killed:  # once: later byte-count events would hit a reused pid
            killed.append(True)
            os.kill(t.pid, signal.SIGKILL)

    with pytest.raises((TargetGone, CkptError)):
        dump(t.pid, tmp_path / "img", progress=kill)
    _no_image_left(tmp_path)
    t.proc.wait(timeout=5)


@pytest.mark.parametrize("compress_level,leave_running", [(None, False), (1, False), (1, True)],
                         ids=["stored", "zstd", "zstd-R"])
def test_dump_disk_full_leaves_target_running(c_target, tmp_path: Path, compress_level: int | None,  # noqa: ANN001
                                              leave_running: bool) -> None:
    """Stored chunks fail on the dumper's thread; zstd frames on the writer thread, reported later;
    with -R the write may fail after the target was let go: no image in every case."""
    t, result = _start(c_target, tmp_path, 0, False)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        # 64 KiB holds the records but not the pages, even compressed (~240 KiB with zstd -1).
        with pytest.raises(CkptError):
            dump(t.pid, small / "img", compress_level=compress_level, leave_running=leave_running)
        assert os.listdir(small) == []
        assert t.alive() and tracer_of(t.pid) == 0
        _result(t, fresh=True)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_restore_refuses_changed_file(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 0, False)
    dump(t.pid, tmp_path / "img")
    _forget(t)
    mapped = Path(str(result) + ".map")
    mapped.write_bytes(b"G" * mapped.stat().st_size)  # same size, new content and mtime
    with pytest.raises(RestoreError, match="changed since the dump"):
        restore(tmp_path / "img")
    with pytest.raises(RestoreError, match="changed since the dump"):  # a mapped file: even when allowed
        restore(tmp_path / "img", allow_changed_files=True)
    assert not os.path.exists(f"/proc/{t.pid}")


def test_restore_detached_with_pidfile(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 1, False)
    dump(t.pid, tmp_path / "img")
    _forget(t)
    _drain(t)
    r = restore(tmp_path / "img", detached=True, pidfile=tmp_path / "pid", inherit_fds=t.stdio_fds)
    try:
        assert r.detached and (tmp_path / "pid").read_text().strip() == str(t.pid)
        _result(t)
        with open(f"/proc/{r.pid}/stat", "rb") as f:
            data = f.read()
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        assert ppid != os.getpid()  # reparented like a daemon, not our child
    finally:
        os.kill(r.pid, signal.SIGKILL)


def test_dump_refused_by_a_resource_leaves_target_running(tmp_path: Path) -> None:
    """A socket ckpt cannot dump (a packet socket with a ring): Unsupported naming the fd, before anything is
    written."""
    code = ("import socket, struct, sys, time\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n"
            "s.setsockopt(263, 5, struct.pack('4I', 4096, 1, 2048, 2))\n"  # PACKET_RX_RING
            "print('READY fd=%d' % s.fileno(), flush=True)\n"
            "while True:\n    time.sleep(0.01)\n    print('PASS', flush=True)\n")
    with spawn([sys.executable, "-c", code], stderr=subprocess.DEVNULL) as t:
        fd = t.ready()["fd"]
        with pytest.raises(Unsupported, match=rf"fd {fd} is a packet socket with a mapped ring"):
            dump(t.pid, tmp_path / "img")
        _no_image_left(tmp_path)
        assert t.alive() and tracer_of(t.pid) == 0
        _result(t, fresh=True)


def test_dump_failing_late_leaves_target_running(c_target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A resource that fails after the others ran (files already read, pipes put back): all-or-nothing still."""
    t, _ = _start(c_target, tmp_path, 1, False)

    def refuse(ctx) -> None:  # noqa: ANN001
        raise Unsupported("a resource that refuses")

    monkeypatch.setattr("ckpt.dump.PROCESS_DUMPERS", [*PROCESS_DUMPERS, ("refuses", refuse)])
    with pytest.raises(Unsupported, match="refuses"):
        dump(t.pid, tmp_path / "img")
    _no_image_left(tmp_path)
    assert t.alive() and tracer_of(t.pid) == 0
    _result(t, fresh=True)
    os.kill(t.pid, signal.SIGUSR1)  # the internal pipe still holds its bytes, offsets unchanged — but SIGUSR2
    assert "CHECK FAIL SIGUSR2 not pending" in t.expect("CHECK")  # was never queued in this test
