"""A process dumped on this host and restored on a second "host" (tests/hosts.py) while the original runs on.

The groundwork of live migration (issue 5, DESIGN §6), with the existing
commands only: ``ckpt dump -R`` on the source leaves the target running;
``ckpt restore -d`` run inside the second host's PID, mount and network
namespaces recreates it there with the same pid — as seen from inside, where
pid numbers start again at 1 — so both copies run at once under one pid
number, each in its own namespace.

The restored copy gets a new stdout pipe through ``--inherit-fd`` (nsenter
hands our descriptor to the restorer at the same number), so what it writes
is told apart from what the original writes on its own pipe.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hosts import SecondHost, ckpt_argv
from targets import HANG_GUARD, Target, spawn, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore and namespaces need root")


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        return next([int(x) for x in line.split()[1:]] for line in f if line.startswith("NSpid:"))


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _ckpt(*args: str | int | os.PathLike[str]) -> None:
    """The ckpt CLI on the source host; its error output in the failure message."""
    res = subprocess.run(ckpt_argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         close_fds=True, timeout=120)
    assert res.returncode == 0, f"ckpt {' '.join(map(str, args))}: exit {res.returncode}: {res.stderr}"


def _restore_inside(host: SecondHost, image: Path, tmp_path: Path) -> tuple[int, Target]:
    """``ckpt restore -D IMAGE -d --inherit-fd fd[W]:1`` inside ``host``: (pid written to the pidfile, stdout reader)."""
    r, w = os.pipe()
    pidfile = tmp_path / "restored.pid"
    try:
        res = host.run_wait(ckpt_argv("restore", "-D", image, "-d", "--pidfile", pidfile, "--inherit-fd", f"fd[{w}]:1"),
                            pass_fds=(w,), timeout=120)
    finally:
        os.close(w)
    if res.returncode != 0:
        os.close(r)
        raise AssertionError(f"restore inside the second host: exit {res.returncode}: {res.stderr}")
    # Read the restored process's stdout like a target's: a Target over a Popen-like holder of the pipe.
    return int(pidfile.read_text()), Target(_PipeProc(r))


class _PipeProc:
    """Just enough of a Popen for :class:`targets.Target` to read lines from a pipe we own."""

    def __init__(self, fd: int) -> None:
        self.stdout = os.fdopen(fd, "rb", buffering=0)
        self.stdin = None
        self.pid = -1

    def poll(self) -> int:
        return 0


def _drain(t: Target) -> None:
    fd = t.proc.stdout.fileno()
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 1 << 16):
            break
    t._buf = b""


def _fresh_pass(t: Target, timeout: float = HANG_GUARD) -> dict[str, str]:
    _drain(t)
    return _fields(t.expect("PASS", timeout))


def test_restore_in_second_host_same_pid_while_source_runs(c_target, second_host: SecondHost,  # noqa: ANN001
                                                            tmp_path: Path) -> None:
    host = second_host
    t = c_target("cr_target", str(tmp_path / "result"), "2", stderr=subprocess.DEVNULL)
    t.ready()
    pid = t.pid
    before = _fresh_pass(t)
    tids = sorted(int(x) for x in before["tids"].split(","))
    # cr_target's SIGUSR1 check wants one SIGUSR2 pending (blocked in every thread) and delivered once later.
    os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: int(_status(pid, "ShdPnd"), 16) & (1 << (signal.SIGUSR2 - 1)), "SIGUSR2 is pending")

    image = tmp_path / "img"
    _ckpt("dump", "-t", pid, "-D", image, "-R")
    assert int(_fresh_pass(t)["round"]) > int(before["round"])  # the source goes on

    inside_pid, copy = _restore_inside(host, image, tmp_path)
    with copy:
        assert inside_pid == pid
        host_pid = host.host_pid(pid)
        assert host_pid != pid
        assert _nspid(host_pid) == [host_pid, pid]  # NSpid: <host pid> <pid inside> — the old pid, inside
        assert host.pid_inside(host_pid) == pid
        assert t.alive() and _nspid(pid) == [pid] and not host.contains(pid)  # the original: still here, on the host

        after = _fields(copy.expect("PASS"))  # the copy checks its memory, threads and tids
        assert after["pid"] == str(pid)  # getpid() inside
        assert sorted(int(x) for x in after["tids"].split(",")) == tids  # gettid() of every thread, inside
        assert int(after["round"]) > int(before["round"])  # the round counter carried over
        inside_tids = []
        for tid in os.listdir(f"/proc/{host_pid}/task"):  # each thread's NSpid: <host tid> <tid inside>
            with open(f"/proc/{host_pid}/task/{tid}/status") as f:
                inside_tids.append(next(int(line.split()[2]) for line in f if line.startswith("NSpid:")))
        assert sorted(inside_tids) == tids

        # Signal it by its pid, from inside the second host: the handler survived and the process-wide state
        # (fds, offsets, internal pipe, cwd, limits, the pending SIGUSR2) checks out.
        host.check_output(["kill", "-USR1", str(pid)])
        line = copy.expect("CHECK")
        assert line.startswith("CHECK PASS"), line
        check = _fields(line)
        assert check["threads"] == str(len(tids)) and check["usr2"] == "1", line

        # The original was not disturbed: it still runs on the host and passes the same check.
        os.kill(pid, signal.SIGUSR1)
        line = t.expect("CHECK")
        assert line.startswith("CHECK PASS") and _fields(line)["usr2"] == "1" and t.alive(), line
        assert int(_fresh_pass(copy)["round"]) > int(after["round"])  # and the copy keeps running


_SERVER = r"""
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 0))
s.listen(8)
n = 0
print(f"READY port={s.getsockname()[1]}", flush=True)
while True:
    c, peer = s.accept()
    n += 1
    c.sendall(f"pong {n} pid={os.getpid()} local={c.getsockname()[0]}\n".encode())
    c.close()
    print(f"SERVED n={n} peer={peer[0]}", flush=True)
"""


def _ask(addr: str, port: int) -> dict[str, str]:
    with socket.create_connection((addr, port), timeout=10) as c:
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
    line = data.decode().strip()
    assert line.startswith("pong "), line
    return {"n": line.split()[1], **_fields(line)}


def test_tcp_listener_restored_in_second_host(second_host: SecondHost, tmp_path: Path) -> None:
    host = second_host
    t = spawn([sys.executable, "-u", "-c", _SERVER], stderr=subprocess.DEVNULL)
    try:
        port = int(_fields(t.expect("READY"))["port"])
        first = _ask("127.0.0.1", port)
        assert first["pid"] == str(t.pid)

        image = tmp_path / "img"
        _ckpt("dump", "-t", t.pid, "-D", image, "-R")
        assert _ask("127.0.0.1", port)["n"] == "2"  # the source still serves

        inside_pid, copy = _restore_inside(host, image, tmp_path)
        with copy:
            assert inside_pid == t.pid and _nspid(host.host_pid(t.pid))[1:] == [t.pid]
            # From the source host, over the veth: the listener came back inside with its port and its counter.
            got = _ask(host.address, port)
            assert got == {"n": "2", "pid": str(t.pid), "local": host.address}, got
            assert _fields(copy.expect("SERVED")) == {"n": "2", "peer": host.host_address}
            # The original still answers on the source, with its own counter.
            assert _ask("127.0.0.1", port) == {"n": "3", "pid": str(t.pid), "local": "127.0.0.1"}
            # The second host does not see the source's listener on its loopback: only its own copy answers there.
            out = host.check_output([sys.executable, "-c", f"import socket; c = socket.create_connection(('127.0.0.1', "
                                                           f"{port}), timeout=10); print(c.recv(100).decode())"])
            assert out.split()[:2] == ["pong", "3"] and f"pid={t.pid}" in out
    finally:
        t.close()


def test_round_trip_dump_inside_restore_back(second_host: SecondHost, tmp_path: Path,
                                             restored: list[int]) -> None:  # noqa: ANN001
    """Host → second host (dump -R here, restore there), then back: dumped *inside*, restored here.

    The server's stdout is a log file (O_APPEND), so neither side needs an inherited descriptor:
    a ckpt running inside a PID namespace cannot see a pipe's peer outside it (see the report).
    """
    host = second_host
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-u", "-c", _SERVER], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    try:
        wait_until(lambda: "READY" in log.read_text(), "the server is ready")
        port = int(_fields(log.read_text().splitlines()[0])["port"])
        pid = proc.pid
        assert _ask("127.0.0.1", port)["n"] == "1"
        _ckpt("dump", "-t", pid, "-D", tmp_path / "there", "-R")
        res = host.run_wait(ckpt_argv("restore", "-D", tmp_path / "there", "-d"), timeout=120)
        assert res.returncode == 0, res.stderr
        assert _ask(host.address, port) == {"n": "2", "pid": str(pid), "local": host.address}

        # Back: ckpt dump inside the second host (it ends the copy there), the original ended here, restore here.
        res = host.run_wait(ckpt_argv("dump", "-t", pid, "-D", tmp_path / "back"), timeout=120)
        assert res.returncode == 0, res.stderr
        wait_until(lambda: not host.processes().keys() - {host.init_pid}, "the copy inside has ended")
        proc.kill()
        proc.wait(timeout=10)
        _ckpt("restore", "-D", tmp_path / "back", "-d")
        restored.append(pid)
        assert _nspid(pid) == [pid]  # back on this host, same pid
        assert _ask("127.0.0.1", port) == {"n": "3", "pid": str(pid), "local": "127.0.0.1"}  # the copy's counter
        wait_until(lambda: log.read_text().count("SERVED") == 3, "the third connection is logged")
        served = [line for line in log.read_text().splitlines() if line.startswith("SERVED")]
        assert served == ["SERVED n=1 peer=127.0.0.1", f"SERVED n=2 peer={host.host_address}",
                          "SERVED n=3 peer=127.0.0.1"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_dump_from_outside_refuses_a_process_in_another_pid_namespace(second_host: SecondHost,
                                                                      tmp_path: Path) -> None:
    host = second_host
    proc = host.run([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    wait_until(lambda: len(host.processes()) == 2, "the sleeper runs inside")
    host_pid = next(p for p in host.processes() if p != host.init_pid)
    res = subprocess.run(ckpt_argv("dump", "-t", host_pid, "-D", tmp_path / "img", "-R"), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, close_fds=True, timeout=120)
    assert proc.poll() is None
    assert res.returncode != 0 and not (tmp_path / "img").exists(), "the dump was accepted"
    assert "another PID namespace" in res.stderr and "nsenter" in res.stderr and "Traceback" not in res.stderr
    pre = subprocess.run(ckpt_argv("pre-dump", "-t", host_pid, "-D", tmp_path / "pre"), stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, close_fds=True, timeout=120)
    assert pre.returncode != 0 and "another PID namespace" in pre.stderr and not (tmp_path / "pre").exists()
