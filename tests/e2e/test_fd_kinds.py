"""Descriptor kinds restored exactly or refused at dump (issue 16 §2): pipes whose other end is closed, a
pipe end open through two open files, pidfds, O_PATH descriptors, /proc files, epoll watches whose
descriptor was closed or renumbered.

Each runs scenarios/py_fdkinds.py with one kind: dumped (which ends it), restored under its pid — the
restore's self-check compares every fdinfo with the dump's — and then the process checks the kind itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _round_trip(py_target, tmp_path: Path, restored: list[int], *kinds: str) -> None:  # noqa: ANN001
    from ckpt import api

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    t = py_target("py_fdkinds.py", str(scratch), *kinds, stderr=subprocess.DEVNULL)
    t.ready()
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == f"PASS fdkinds {','.join(kinds)}", t.lines


def test_pipes_whose_other_end_is_closed(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A read end whose writer is gone gives its queued bytes then EOF, a write end whose reader is gone
    EPIPE, a FIFO's read end likewise (was: refused at dump, "its other end is closed")."""
    _round_trip(py_target, tmp_path, restored, "halfpipe")


def test_a_pipe_end_open_through_two_open_files(py_target, tmp_path: Path,  # noqa: ANN001
                                                restored: list[int]) -> None:
    """Ends reopened through /proc/self/fd/N: one pipe, each open file its own flags (was: dumped, then
    refused at restore)."""
    _round_trip(py_target, tmp_path, restored, "reopened")
