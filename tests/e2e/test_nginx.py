"""nginx (master + 2 workers) checkpointed as a process tree, and migrated to a second host.

The test starts nginx itself with its own prefix, config and loopback port
(no daemon: the master is the test's child, the root of the tree).  Between
master and workers: socketpairs (nginx's channels), the inherited listening
socket, shared anonymous memory (accept mutex, stats), epoll and eventfd in
each worker.  "Keeps serving" means a GET answers with the page, several
times (so both workers take requests), with the same master and worker pids.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ckpt import api
from hosts import ckpt_argv
from targets import tracer_of, wait_until
from test_migrate import _free_port, _Receiver, _token

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make installs nginx-light)"),
]
PAGE = "hello from a checkpointed nginx\n"


class _Nginx:
    """nginx -p PREFIX with a config of its own: master + 2 workers on 0.0.0.0:PORT.

    The workers run as root: pytest's tmp_path (0700, root's) is the prefix.
    """

    def __init__(self, prefix: Path, port: int, listen: str = "") -> None:
        self.prefix, self.port = prefix, port
        (prefix / "html").mkdir(parents=True)
        (prefix / "logs").mkdir()
        (prefix / "html" / "index.html").write_text(PAGE)
        temp = "\n".join(f"  {k}_temp_path {prefix}/tmp_{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(f"""daemon off;
user root;
master_process on;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  server {{ listen {port}{listen}; root {prefix}/html; }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     close_fds=True, start_new_session=True)
        self.pid = self.proc.pid
        wait_until(lambda: len(self.workers()) == 2 and self.serves("127.0.0.1"), "nginx serves", timeout=20)

    def workers(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return sorted(int(p) for p in f.read().split())
        except OSError:
            return []

    def serves(self, address: str, times: int = 1) -> bool:
        try:
            for _ in range(times):
                with urllib.request.urlopen(f"http://{address}:{self.port}/", timeout=2) as r:
                    if r.read().decode() != PAGE:
                        return False
            return True
        except OSError:
            return False

    def kill(self, pids: list[int]) -> None:
        for p in [self.pid, *pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def nginx(tmp_path: Path):  # noqa: ANN201
    n = _Nginx(tmp_path / "nginx", _free_port())
    workers = n.workers()
    yield n
    n.kill(sorted({*workers, *n.workers()}))  # a reload made new ones; workers outlive a killed master
    if n.proc.poll() is None:
        n.proc.wait(timeout=10)


def test_nginx_dump_restore_keeps_serving(nginx: _Nginx, tmp_path: Path) -> None:
    workers = nginx.workers()
    stats = api.dump(nginx.pid, tmp_path / "img")
    assert stats.processes == 3
    nginx.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    assert not nginx.serves("127.0.0.1")
    r = api.restore(tmp_path / "img", detached=True)
    assert r.pid == nginx.pid and sorted(r.processes) == sorted([nginx.pid, *workers])
    assert nginx.workers() == workers and all(tracer_of(p) == 0 for p in [nginx.pid, *workers])
    assert nginx.serves("127.0.0.1", times=10)
    # and the master still commands its workers through the restored channels: a reload makes new ones
    os.kill(nginx.pid, signal.SIGHUP)
    wait_until(lambda: len(nginx.workers()) == 2 and nginx.workers() != workers, "new workers after SIGHUP",
               timeout=20)
    assert nginx.serves("127.0.0.1", times=4)


def _listeners(pid: int, port: int) -> int:
    """How many of ``pid``'s descriptors are TCP sockets listening on ``port`` (from /proc/net/tcp)."""
    inodes = {ln.split()[9] for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A"}
    links = {f"socket:[{i}]" for i in inodes}
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}") in links for fd in os.listdir(f"/proc/{pid}/fd"))


def test_nginx_with_reuseport_listeners_dump_restore_keeps_serving(tmp_path: Path) -> None:
    """``listen PORT reuseport``: one SO_REUSEPORT listener per worker on the same port, all in the master."""
    n = _Nginx(tmp_path / "nginx", _free_port(), " reuseport")
    workers = n.workers()
    try:
        assert _listeners(n.pid, n.port) == 2
        api.dump(n.pid, tmp_path / "img")
        n.proc.returncode = -signal.SIGKILL
        r = api.restore(tmp_path / "img", detached=True)  # each listener re-bound to the port beside the other
        assert r.pid == n.pid and n.workers() == workers and _listeners(n.pid, n.port) == 2
        assert n.serves("127.0.0.1", times=10)
    finally:
        n.kill(workers)


def test_nginx_dump_leave_running_keeps_serving(nginx: _Nginx, tmp_path: Path) -> None:
    workers = nginx.workers()
    api.dump(nginx.pid, tmp_path / "img", leave_running=True)
    assert nginx.workers() == workers and nginx.serves("127.0.0.1", times=4)


def test_nginx_migrates_to_a_second_host_and_serves_there(second_host, nginx: _Nginx,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    workers = nginx.workers()
    rx = _Receiver(host, tmp_path, token, port)
    res = subprocess.run(ckpt_argv("migrate", "-t", nginx.pid, "--to", f"{host.address}:{port}",
                                   "--token-file", token, "-v"),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True, timeout=120)
    assert res.returncode == 0, res.stderr
    nginx.proc.wait(timeout=10)  # the source ended once the destination ran it
    result = rx.result()
    assert result["pid"] == nginx.pid, result
    inside = {host.pid_inside(h) for h in host.processes()}
    assert {nginx.pid, *workers} <= inside
    deadline = time.monotonic() + 10
    while not nginx.serves(host.address, times=4) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nginx.serves(host.address, times=4), (result, res.stderr)
