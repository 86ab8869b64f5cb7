"""A child forked by a tracked process inherits ckpt's parked userfaultfd.

The copy is ckpt's, not the child's: the child must dump and restore without
it (it is not one of its files), and the parent's tracking must carry on.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image.reader import Image
from targets import tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pre-dump/restore needs root (ptrace, clone3 set_tid)")

UFFD = "anon_inode:[userfaultfd]"


def _uffd_fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD}


def test_forked_child_of_a_tracked_process(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    parent = py_target("py_forker.py", stdin_pipe=True, stderr=subprocess.DEVNULL)
    parent.ready()
    first = api.pre_dump(parent.pid, tmp_path / "p1")
    assert first.full and first.method == "uffd-wp"
    parked = _uffd_fds(parent.pid)
    assert len(parked) == 1
    try:
        parent.write(b"fork\n")
        child = int(parent.expect("CHILD").split("=")[1])
        try:
            assert _uffd_fds(child) == parked  # inherited: same number (same userfaultfd)

            api.dump(child, tmp_path / "c", leave_running=True)  # used to be refused as an anonymous inode
            assert _uffd_fds(child) == parked  # -R: nothing of the child's changed
            api.dump(child, tmp_path / "c2")  # and the kill variant, which the restore brings back
        except BaseException:
            os.kill(child, signal.SIGKILL)
            raise
        r = api.restore(tmp_path / "c2", inherit_fds=parent.stdio_fds, detached=True)
        restored.append(r.pid)
        assert r.pid == child and tracer_of(child) == 0
        assert _uffd_fds(child) == set()  # ckpt's fd is not one of the child's files
        os.kill(child, signal.SIGUSR1)
        assert parent.expect("PASS").startswith(f"PASS child {child}")

        second = api.pre_dump(parent.pid, tmp_path / "p2", prev_images_dir=tmp_path / "p1")
        assert not second.full, second.notes  # the parent's tracking is intact
        assert 0 < second.pages_stored < first.pages_stored
        assert Image.open(tmp_path / "p2").parent is not None
    finally:
        api.track_stop(parent.pid)
    assert _uffd_fds(parent.pid) == set()
