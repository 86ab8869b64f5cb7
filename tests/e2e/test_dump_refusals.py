"""A dump never succeeds for what the restore would refuse (issue 16 §1).

Each case once dumped without complaint (ending the process) and was then refused at restore, or came
back different.  Each runs scenarios/py_dumpcases.py with one kind: either it round-trips — dumped, restored
under its pid (the restore's self-check compares maps, fdinfo and socket options with the dump's), then
checked by the process itself — or the dump refuses it, naming the process, the fd and what, and leaves the
process running as it was (it then checks itself too).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from targets import tracer_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def _start(py_target, tmp_path: Path, kind: str):  # noqa: ANN001, ANN202
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    t = py_target("py_dumpcases.py", str(scratch), kind, stderr=subprocess.DEVNULL)
    t.ready()
    return t


@pytest.mark.parametrize("kind", [
    "memfd-part",      # a memfd mapped in part, its descriptor closed: the object's other pages kept
    "sysv-part",       # a removed SysV segment unmapped but for its middle page (was: attached whole, refused)
    "posix-shm-part",  # a /dev/shm object mapped in part
    "unix-unlinked",   # a unix socket whose path was deleted (was: its file there again after restore)
    "freebind",        # IPv4 bound to a non-local address with IP_FREEBIND
    "freebind6",       # IPv6 with IPV6_FREEBIND, and IP_TRANSPARENT
    "reuseport",       # two TCP and two UDP sockets of one process on one port (SO_REUSEPORT)
    "reuseport-tree",  # two TCP listeners on one port, in a parent and its child
])
def test_restored_exactly(py_target, tmp_path: Path, restored: list[int], kind: str) -> None:  # noqa: ANN001
    from ckpt import api

    t = _start(py_target, tmp_path, kind)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("") == f"PASS dumpcases {kind}"


@pytest.mark.parametrize("kind, message", [
    ("unix-replaced-file", r"process {pid}: fd \d+ is a unix datagram socket bound to \S+/file.sock, whose file was "
                           r"deleted since and the path now names another file \(inode \d+\): the restore could not "
                           r"bind it there"),
    ("unix-replaced-sock", r"process {pid}: fd \d+ is a unix datagram socket bound to \S+/twice.sock, whose file was "
                           r"deleted since and the path now names another socket \(inode \d+\)"),
    ("unix-dir-gone", r"process {pid}: fd \d+ is a unix datagram socket bound to \S+/sub/x.sock, whose directory was "
                      r"deleted since"),
    ("devnode", r"process {pid}: fd \d+ is '\S+/null-like', a deleted inode of mode 20\d{{3}}, which ckpt cannot make "
                r"again"),
])
def test_refused_at_dump(py_target, tmp_path: Path, kind: str, message: str) -> None:  # noqa: ANN001
    """Before, each was dumped (the process ended) and its restore refused: the path was taken, or gone."""
    from ckpt import api
    from ckpt.errors import Unsupported

    t = _start(py_target, tmp_path, kind)
    with pytest.raises(Unsupported, match=message.format(pid=t.pid)):
        api.dump(t.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists() and tracer_of(t.pid) == 0
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("") == f"PASS dumpcases {kind}"
