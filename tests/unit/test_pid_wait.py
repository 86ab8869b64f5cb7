"""A restore waits for its pid to be free; a zombie that is our own child is reaped, not waited on.

A receiver that is the init of its PID namespace (or a subreaper) inherits the helpers of a restore
attempt it gave up; their zombies held the pid of the next attempt until it failed ("still held by an
unreaped zombie (ckpt)").
"""

from __future__ import annotations

import os
import time

import pytest

from ckpt.errors import RestoreError
from ckpt.restore import wait_pid_free


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()[0].decode()


def test_our_own_zombie_is_reaped() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + 30
    while _state(pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    wait_pid_free(pid, timeout=30)
    assert not os.path.exists(f"/proc/{pid}")


def test_a_running_process_is_named() -> None:
    with pytest.raises(RestoreError, match="is taken by a running process"):
        wait_pid_free(os.getpid(), timeout=1)
