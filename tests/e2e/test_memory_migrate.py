"""POSIX shared memory carried by a migration: the destination has no such /dev/shm file.

The second host (tests/hosts.py) shares the host's files; for this test its /dev/shm is a tmpfs of its own
(mounted in its mount namespace, unmounted after), so the file the source maps is not there, as on another
machine.  The migrated tree must find it made again from the image, and carry on sharing it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hosts import SecondHost
from targets import SCENARIOS, kill_all, wait_until
from test_migrate import _free_port, _migrate, _Receiver, _token

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


def test_migration_carries_a_dev_shm_file(second_host: SecondHost, tmp_path: Path) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    name = f"ckpt-mig-{os.getpid()}-{tmp_path.name}"
    log = tmp_path / "shm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-u", str(SCENARIOS / "py_posix_shm.py"), name],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL, close_fds=True,
                                start_new_session=True, cwd=SCENARIOS)

    def line(pattern: str, after: int = 0) -> re.Match[str]:
        found: list[re.Match[str]] = []
        wait_until(lambda: bool(found.extend(m for ln in log.read_text().splitlines()[after:]
                                             if (m := re.match(pattern, ln))) or found), pattern)
        return found[0]

    child = 0
    host.check_output(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm"])
    try:
        child = int(line(r"READY pid=\d+ child=(\d+)").group(1))
        os.kill(proc.pid, signal.SIGUSR1)
        line(r"PASS posix-shm round=1")
        assert not host.run_wait(["test", "-e", f"/dev/shm/{name}"]).returncode == 0  # not at the destination
        rx = _Receiver(host, tmp_path, token, port)
        res, _ = _migrate(host, proc.pid, port, token, tmp_path)
        assert res.returncode == 0, res.stderr
        assert rx.result()["outcome"] == "running"
        proc.wait(timeout=10)
        assert host.run_wait(["test", "-e", f"/dev/shm/{name}"]).returncode == 0  # made again there
        n = len(log.read_text().splitlines())
        host.check_output(["kill", "-USR1", str(proc.pid)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not re.search(r"^(PASS|FAIL)", "\n".join(
                log.read_text().splitlines()[n:]), re.M):
            time.sleep(0.05)
        assert "PASS posix-shm round=2" in log.read_text().splitlines()[n:], log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child:
            kill_all([child])
        host.run_wait(["sh", "-c", f"rm -f /dev/shm/{name}; umount -l /dev/shm"])
        Path("/dev/shm", name).unlink(missing_ok=True)
