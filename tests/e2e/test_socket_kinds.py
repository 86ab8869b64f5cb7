"""Raw, packet and netlink sockets and UDP shutdown directions: each comes back and still works (run as root).

The scenario (tests/scenarios/py_rawsk.py) checks itself before the dump and after the restore: an ICMP
echo answered on a raw socket, a frame seen by packet sockets on lo, a route dump and a kept port id on a
netlink socket, the shutdown of UDP sockets as poll shows it, every option it set.  The restore's
self-check compares the kernel's account (inet, packet and netlink sections, every option) as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ckpt import api
from ckpt.errors import Unsupported
from ckpt.image.reader import Image
from ckpt.image.pb import files_pb2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="raw and packet sockets need root")
K = files_pb2.FileEntry.Kind


def _started(py_target, kind: str, *args: str):  # noqa: ANN001, ANN202
    t = py_target("py_rawsk.py", kind, *args, stderr=subprocess.DEVNULL)
    t.ready(20)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == f"PASS rawsk {kind} round=1"
    return t


@pytest.mark.parametrize("kind,expected", [("udp", K.INET), ("raw", K.INET), ("packet", K.PACKET),
                                           ("netlink", K.NETLINK)])
def test_socket_kind_round_trips(py_target, tmp_path: Path, restored: list[int], kind: str,  # noqa: ANN001
                                 expected: int) -> None:
    t = _started(py_target, kind)
    api.dump(t.pid, tmp_path / "img")
    t.proc.returncode = -signal.SIGKILL
    kinds = {e.kind for e in Image.open(tmp_path / "img").file_entries()}
    assert expected in kinds
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)  # with the self-check
    restored.append(r.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.expect("PASS", timeout=20) == f"PASS rawsk {kind} round=2"
