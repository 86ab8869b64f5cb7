"""Multicast memberships of UDP sockets (scenarios/py_mcast.py): joined again after a restore, with their filters."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import RestoreError
from ckpt.image.reader import Image
from ckpt.resources import mcast

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def _started(py_target):  # noqa: ANN001, ANN202
    t = py_target("py_mcast.py", stderr=subprocess.DEVNULL)
    t.ready(20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS mcast round=1"
    return t


def test_memberships_and_source_filters_come_back(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = _started(py_target)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    groups = sorted(m.group for e in Image.open(tmp_path / "img").file_entries() for m in e.inet.memberships)
    assert groups[:3] == ["239.1.2.3", "239.1.2.4", "239.1.2.5"]
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # the self-check compares every membership too
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == "PASS mcast round=2"


def test_a_membership_the_restore_lost_fails_the_self_check(py_target, tmp_path: Path,  # noqa: ANN001
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    t = _started(py_target)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    monkeypatch.setattr(mcast, "restore", lambda inj, s, fd, inet: None)
    with pytest.raises(RestoreError, match=r"came back different from the dump: inet/\d+: mcast: "
                                           r"'.*lo 239\.1\.2\.3 exclude -.*' at the dump, absent after the restore"):
        api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
