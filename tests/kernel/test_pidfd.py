"""pidfd_open, pidfd_getfd, pidfd_send_signal on a target."""

from __future__ import annotations

import os
import signal

import pytest

from ckpt.kernel.pidfd import pidfd_getfd, pidfd_open, pidfd_send_signal


def test_send_signal_and_take_a_descriptor(c_target) -> None:
    t = c_target("spin")
    t.ready()
    pidfd = pidfd_open(t.pid)
    try:
        out = pidfd_getfd(pidfd, 1)  # the target's stdout: the pipe we read
        try:
            os.write(out, b"through the target's own fd\n")
        finally:
            os.close(out)
        assert t.readline() == "through the target's own fd"
        pidfd_send_signal(pidfd, signal.SIGUSR1)
        t.expect("PASS")
        with pytest.raises(OSError) as exc:
            pidfd_getfd(pidfd, 99)
        assert "pidfd_getfd" in str(exc.value)
    finally:
        os.close(pidfd)


def test_pidfd_open_missing_pid() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) + 1
    with pytest.raises(OSError) as exc:
        pidfd_open(pid)
    assert f"pidfd_open({pid})" in str(exc.value)
