"""The restore's self-check (ckpt/observed.py) on a real restore: a difference made on purpose is caught.

ckpt restore is stopped where a process is built and frozen (``CKPT_TEST_HOOK=restore-threads-created:stop``),
the test changes that process from outside as the kernel lets anyone with the right do (its open-files limit,
with prlimit(2)), and lets the restore go on: the check must fail the restore naming the limit, and leave
nothing under the pid.  With ``--check=off`` the same restore goes through, and the change shows.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from targets import thread_state, wait_until

REPO = Path(__file__).resolve().parents[2]
CKPT = [sys.executable, "-m", "ckpt.cli"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _sleeper(tmp_path: Path) -> int:
    p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    res = subprocess.run([*CKPT, "dump", "-t", str(p.pid), "-D", str(tmp_path / "img")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    p.wait()
    assert res.returncode == 0, res.stderr
    return p.pid


def _restore_changed(tmp_path: Path, pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """``ckpt restore -d``, with the process's RLIMIT_NOFILE changed while it is built and frozen."""
    proc = subprocess.Popen([*CKPT, "restore", "-d", "-D", str(tmp_path / "img"), *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, CKPT_TEST_HOOK="restore-threads-created:stop"))
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 120)
        line = proc.stderr.readline() if ready else ""
        assert line.strip() == "ckpt: paused at restore-threads-created", (line, proc.poll())
        wait_until(lambda: thread_state(proc.pid, proc.pid) == "T", "ckpt stopped itself")
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft - 1, hard))
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, line + err)


def test_a_process_changed_during_the_restore_is_refused(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    res = _restore_changed(tmp_path, pid)
    assert res.returncode == 1, res.stderr
    assert f"process {pid} came back different from the dump: limits: Max open files:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), f"nothing left under pid {pid}")


def test_check_off_restores_it_as_it_is(tmp_path: Path) -> None:
    pid = _sleeper(tmp_path)
    before = resource.getrlimit(resource.RLIMIT_NOFILE)  # sleep inherited ours
    res = _restore_changed(tmp_path, pid, "--check=off")
    try:
        assert res.returncode == 0, res.stderr
        assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (before[0] - 1, before[1])
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_descriptor_and_thread_state_that_used_to_be_dropped(py_target, tmp_path: Path,  # noqa: ANN001
                                                               restored: list[int]) -> None:
    """O_ASYNC with its owner and signal (socket and pipe), an O_TMPFILE file, thread names, a page made
    read-only after it was written: the process checks each itself after the restore (and the self-check
    compared what the kernel prints)."""
    from ckpt import api

    t = py_target("py_fdstate.py", stderr=subprocess.DEVNULL)
    t.ready()
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS fdstate round=1"
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == "PASS fdstate round=2"


def _rewrite_process(image_dir: Path, pid: int, edit) -> None:  # noqa: ANN001
    """Apply ``edit`` to proc-PID.img's ProcessEntry and write it again, with its digest in the inventory."""
    import hashlib

    from ckpt.image import Image, framing, kinds
    from inventory_edit import rewrite_inventory

    img = Image.open(image_dir)
    entry = img.process(pid)
    edit(entry)
    name = f"proc-{pid}.img"
    data = framing.encode_file(kinds.PROCESS.magic, [entry.SerializeToString()],
                               version=img.inventory.format_version)
    (image_dir / name).write_bytes(data)

    def digest(inv) -> None:  # noqa: ANN001
        f = next(f for f in inv.files if f.name == name)
        f.size, f.sha256 = len(data), hashlib.sha256(data).digest()
    rewrite_inventory(image_dir, digest)


def test_a_seccomp_filter_restored_other_than_dumped_is_refused(py_target, tmp_path: Path) -> None:  # noqa: ANN001
    """The account holds a digest of each thread's filter programs: an image whose filter was changed
    (getppid refused with EACCES instead of EPERM; mode and filter count the same) fails the check, naming it."""
    from ckpt import api
    from ckpt.errors import RestoreError

    t = py_target("py_seccomp.py", stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump

    def edit(entry) -> None:  # noqa: ANN001
        f = entry.seccomp.filters[0]
        f.program = f.program.replace((0x50000 | 1).to_bytes(4, "little"), (0x50000 | 13).to_bytes(4, "little"))

    _rewrite_process(tmp_path / "img", t.pid, edit)
    with pytest.raises(RestoreError) as err:
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    assert f"process {t.pid} came back different from the dump: task/{t.pid}/seccomp: filter 0" in str(err.value)
    wait_until(lambda: not os.path.exists(f"/proc/{t.pid}"), f"nothing left under pid {t.pid}")
