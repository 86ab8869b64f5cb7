"""Dump and restore real processes with the same pid and tids (issue 3: memory and threads).

The target (scenarios/cr_target.c) checks its own memory, AVX-512 and MXCSR
state and thread ids for ever and writes PASS/FAIL into a result file it opens
afresh each time, so no descriptor has to survive the restore (files are
another module's job).  A new PASS line written after the restore, with a
round counter that went on counting, proves the restored process runs on the
saved state.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt.dump import dump, restore
from ckpt.errors import CkptError, RestoreError, TargetGone
from ckpt.image.reader import Image
from targets import Target, tracer_of, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _parse(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _result(path: Path, after: float = 0.0, timeout: float = 5.0) -> dict[str, str]:
    """The next PASS line written after ``after`` (mtime); AssertionError on FAIL or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_mtime > after:
                line = path.read_text().strip()
                if line.startswith("FAIL"):
                    raise AssertionError(f"target reported: {line}")
                if line.startswith("PASS"):
                    return _parse(line)
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"no new result in {path} within {timeout}s")


@pytest.fixture
def restored() -> Iterator[list[int]]:
    """Pids of restored processes (our children): killed and reaped after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _start(c_target, tmp_path: Path, nthreads: int, blocked: bool) -> tuple[Target, Path]:  # noqa: ANN001
    result = tmp_path / "result"
    args = [str(result), str(nthreads)] + (["blocked"] if blocked else [])
    t = c_target("cr_target", *args, stdin_pipe=True)
    t.ready(timeout=20)
    _result(result)
    return t, result


def _forget(t: Target) -> None:
    """The dump killed and reaped the target: keep Popen from ever waiting on the pid again (it is reused)."""
    t.proc.returncode = -signal.SIGKILL


def _tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "R"])
@pytest.mark.parametrize("nthreads,blocked", [(0, False), (8, False), (2, True)], ids=["single", "8threads", "blocked"])
def test_dump_restore_same_pid(c_target, tmp_path: Path, restored: list[int], nthreads: int, blocked: bool,  # noqa: ANN001
                               leave_running: bool) -> None:
    t, result = _start(c_target, tmp_path, nthreads, blocked)
    pid = t.pid
    before = _result(result)
    tids_before = _tids(pid)
    assert len(tids_before) == 1 + nthreads + (2 if blocked else 0)
    if leave_running:
        first = dump(pid, tmp_path / "img1", leave_running=True)
        assert first.left_running and tracer_of(pid) == 0
        mid = _result(result, after=time.time())  # still running and still checking itself
        assert int(mid["round"]) > int(before["round"])
        with pytest.raises(RestoreError, match="taken"):  # the pid is still in use
            restore(tmp_path / "img1")
        stats = dump(pid, tmp_path / "img2", leave_running=True)  # a second dump of the same live process
        image = tmp_path / "img2"
        t.close()  # now end it ourselves; the restore waits for the pid to be free
    else:
        stats = dump(pid, tmp_path / "img")
        image = tmp_path / "img"
        _forget(t)
        assert not os.path.exists(f"/proc/{pid}")
    assert stats.threads == len(tids_before) and stats.pages_stored >= (64 << 20) // 4096
    assert Image.open(image).verify() == []
    last = _result(result)
    result.unlink()

    r = restore(image)
    restored.append(r.pid)
    assert r.pid == pid and list(r.tids) == [pid] + sorted(x for x in tids_before if x != pid)
    after = _result(result, timeout=10)
    assert after["pid"] == str(pid)
    assert sorted(int(x) for x in after["tids"].split(",")) == tids_before  # gettid() of each thread
    assert _tids(pid) == tids_before
    assert int(after["round"]) >= int(last["round"])  # memory (the round counter) carried over
    assert tracer_of(pid) == 0
    if nthreads:
        counters = [int(c) for c in after["counters"].split(",")]
        wait_until(lambda: all(int(c) > o for c, o in zip(_result(result)["counters"].split(","), counters)),
                   "every worker thread makes progress after the restore")
    if blocked:
        # nanosleep seized with -ERESTART_RESTARTBLOCK: returns EINTR (the loop goes on with the remaining time);
        # read() seized with -ERESTARTSYS: run again — fds are not restored yet, so it now fails with EBADF,
        # never with EINTR or the kernel-internal 512.
        wait_until(lambda: _result(result)["readres"] != "-2" and _result(result)["eintr"] != before["eintr"],
                   "the blocked threads return from their syscalls")
        final = _result(result)
        assert int(final["eintr"]) == int(before["eintr"]) + 1
        assert (final["readres"], final["readerr"]) == ("-1", str(errno.EBADF))
    assert stats.frozen_seconds < 2.0


def _no_image_left(parent: Path) -> None:
    assert [p.name for p in parent.iterdir() if p.name.startswith((".img", "img"))] == []


def test_dump_interrupted_leaves_target_running(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 2, False)

    def interrupt(phase: str) -> None:
        if phase == "memory":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dump(t.pid, tmp_path / "img", progress=interrupt)
    _no_image_left(tmp_path)
    assert t.alive() and tracer_of(t.pid) == 0
    _result(result, after=time.time())  # still running, still consistent


def test_dump_target_killed_meanwhile(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, _ = _start(c_target, tmp_path, 2, False)

    def kill(phase: str) -> None:
        if phase == "memory":
            os.kill(t.pid, signal.SIGKILL)

    with pytest.raises((TargetGone, CkptError)):
        dump(t.pid, tmp_path / "img", progress=kill)
    _no_image_left(tmp_path)
    t.proc.wait(timeout=5)


def test_dump_disk_full_leaves_target_running(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 0, False)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        # Incompressible-enough data is not needed: 1 MiB cannot hold even the compressed 64 MiB pattern.
        with pytest.raises(CkptError):
            dump(t.pid, small / "img", compress_level=None)
        assert os.listdir(small) == []
        assert t.alive() and tracer_of(t.pid) == 0
        _result(result, after=time.time())
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
    assert not os.path.exists(f"/proc/{t.pid}")


def test_restore_detached_with_pidfile(c_target, tmp_path: Path) -> None:  # noqa: ANN001
    t, result = _start(c_target, tmp_path, 1, False)
    dump(t.pid, tmp_path / "img")
    _forget(t)
    result.unlink()
    r = restore(tmp_path / "img", detached=True, pidfile=tmp_path / "pid")
    try:
        assert r.detached and (tmp_path / "pid").read_text().strip() == str(t.pid)
        _result(result, timeout=10)
        with open(f"/proc/{r.pid}/stat", "rb") as f:
            data = f.read()
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        assert ppid != os.getpid()  # reparented like a daemon, not our child
    finally:
        os.kill(r.pid, signal.SIGKILL)
