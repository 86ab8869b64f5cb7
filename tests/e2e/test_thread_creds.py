"""Threads of one process with credentials of their own (uids, gids and groups, capabilities, no_new_privs
set with raw syscalls) keep them after a restore: scenarios/thread_creds.c compares every thread's
/proc/self/task/TID/status lines and its own view from inside (PASS)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.image.reader import Image
from test_dump_restore import _forget

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)")


def test_threads_keep_their_own_credentials(c_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    t = c_target("thread_creds", stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    _forget(t)
    entry = Image.open(tmp_path / "img").process(t.pid)
    assert len(entry.thread_creds) == 4, entry.thread_creds
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(r.pid, signal.SIGUSR1)
    line = t.expect("PASS")
    assert line == "PASS", line
