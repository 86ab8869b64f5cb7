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

from targets import tracer_of

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


def _refused(py_target, tmp_path: Path, kind: str, message: str) -> None:  # noqa: ANN001
    """The dump refuses with ``message`` (a regex; ``{pid}``: the target's) and leaves the target as it was."""
    from ckpt import api
    from ckpt.errors import Unsupported

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    t = py_target("py_fdkinds.py", str(scratch), kind, stderr=subprocess.DEVNULL)
    t.ready()
    with pytest.raises(Unsupported, match=message.format(pid=t.pid)):
        api.dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists() and tracer_of(t.pid) == 0
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS") == f"PASS fdkinds {kind}", t.lines


def test_pipes_whose_other_end_is_closed(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """A read end whose writer is gone gives its queued bytes then EOF, a write end whose reader is gone
    EPIPE, a FIFO's read end likewise (was: refused at dump, "its other end is closed")."""
    _round_trip(py_target, tmp_path, restored, "halfpipe")


def test_a_pipe_end_open_through_two_open_files(py_target, tmp_path: Path,  # noqa: ANN001
                                                restored: list[int]) -> None:
    """Ends reopened through /proc/self/fd/N: one pipe, each open file its own flags (was: dumped, then
    refused at restore)."""
    _round_trip(py_target, tmp_path, restored, "reopened")


def test_pidfds(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Of a child, of the process itself, of a reaped child and of a zombie child: each names the same process
    again (was: refused at dump, "an anonymous inode ([pidfd])")."""
    _round_trip(py_target, tmp_path, restored, "pidfd")


def test_o_path_descriptors(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Of a file, of a symlink itself (O_NOFOLLOW), of a directory and of a FIFO: reopened with O_PATH (was: a
    FIFO or a symlink refused, a file reopened and checked by means O_PATH refuses)."""
    _round_trip(py_target, tmp_path, restored, "opath")


def test_proc_files(py_target, tmp_path: Path, restored: list[int]) -> None:  # noqa: ANN001
    """Its own /proc/self/stat (at its offset), maps, status, /proc/self and /proc/CHILD directories,
    /proc/meminfo: reopened for the restored pids (was: refused at restore as "changed since the dump")."""
    _round_trip(py_target, tmp_path, restored, "procfiles")


def test_epoll_watches_of_closed_or_reused_numbers(py_target, tmp_path: Path,  # noqa: ANN001
                                                   restored: list[int]) -> None:
    """A watch whose number was closed (the file dup'ed elsewhere) or now holds another file: added again
    under its old number, which is left as it was (was: refused at dump, "no longer open under that
    number", or re-added on the wrong file)."""
    _round_trip(py_target, tmp_path, restored, "epoll")


@pytest.mark.parametrize("kind, message", [
    ("opath-deleted", r"process {pid}: fd \d+ is an O_PATH descriptor of the deleted file \S+/gone, which ckpt "
                      r"cannot dump"),
    ("proc-outside", r"process {pid}: fd \d+ is /proc/\d+/stat, a /proc file of process \d+, outside the dumped "
                     r"tree, which ckpt cannot reopen for it"),
    ("epoll-elsewhere", r"process {pid}: fd \d+ is an epoll instance watching a file added as fd \d+ \(inode \d+\) "
                        r"that no descriptor of the process holds any more"),
    ("proc-ns", r"process {pid}: fd \d+ is the namespace net:\[\d+\] \(opened from /proc/PID/ns\), which ckpt "
                r"cannot dump"),
    ("pidfd-outside", r"process {pid}: fd \d+ is a pidfd of process \d+, outside the dumped tree"),
    ("pidfd-grandchild", r"process {pid}: fd \d+ is a pidfd of process \d+ of the tree, which is made after "
                         r"process {pid}'s descriptors"),
])
def test_refused_at_dump(py_target, tmp_path: Path, kind: str, message: str) -> None:  # noqa: ANN001
    _refused(py_target, tmp_path, kind, message)
