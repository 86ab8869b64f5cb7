"""Real programs from issue 16's list, dumped and restored: `tail -f` on a growing file and
`python3 -m http.server` run as a shell job from a terminal.

tail follows its file with inotify: an event it has not read yet at the dump is lost at restore (no
system call queues one), so the dump refuses it, naming `--tolerate inotify-events`; with nothing
queued, or with the tolerance, tail comes back following the file.  http.server is a job of a shell on
a pseudo-terminal this test owns; it is dumped with `--shell-job` and restored with `--shell-job` by a
ckpt run on another pseudo-terminal, where it logs the requests it answers.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from targets import HANG_GUARD, Target, kill_all, spawn, tracer_of, wait_in_syscall

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")

CKPT = [sys.executable, "-m", "ckpt.cli"]
F_SETPIPE_SZ = 1031
NR_WRITE = 1


def _append(path: Path, data: bytes) -> None:
    """One write at the end of ``path``: one inotify IN_MODIFY event for a watcher, made before it returns."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _tail(tmp_path: Path) -> tuple[Target, Path]:
    """`tail -f` of a file with one line, whose stdout is a pipe of one page that the test reads."""
    log = tmp_path / "grow.log"
    log.write_bytes(b"first\n")
    t = spawn(["tail", "-n", "+1", "-f", str(log)], stderr=subprocess.DEVNULL)
    fcntl.fcntl(t.proc.stdout.fileno(), F_SETPIPE_SZ, 4096)
    assert t.readline() == "first"
    return t, log


def _restore(tmp_path: Path, t: Target, restored: list[int]) -> None:
    from ckpt import api

    t.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
    r = api.restore(tmp_path / "img", inherit_fds=t.stdio_fds)
    restored.append(r.pid)


def test_tail_f_with_an_event_unread_is_refused_then_tolerated(tmp_path: Path, restored: list[int]) -> None:
    """tail blocked writing a long line to its full pipe has not read the event of the next line: the dump
    refuses it (the CLI's message names the fd and the tolerance) and leaves tail running; with
    `--tolerate inotify-events` it is dumped and restored, and the next append brings both lines."""
    from ckpt import api

    with _tail(tmp_path)[0] as t:
        log = tmp_path / "grow.log"
        long = b"x" * 20000
        _append(log, long + b"\n")
        wait_in_syscall(t.pid, t.pid, NR_WRITE)  # its pipe is full: the next event waits unread
        _append(log, b"second\n")
        res = subprocess.run([*CKPT, "dump", "-t", str(t.pid), "-D", str(tmp_path / "img")], capture_output=True,
                             text=True, timeout=HANG_GUARD)
        assert res.returncode == 1, res.stderr
        first, *rest = res.stderr.splitlines()
        assert re.fullmatch(rf"ckpt: process {t.pid}: fd \d+ .*inotify.*", first), res.stderr
        assert any("--tolerate inotify-events" in line for line in rest), res.stderr
        assert not (tmp_path / "img").exists() and tracer_of(t.pid) == 0 and t.alive()

        stats = api.dump(t.pid, tmp_path / "img", tolerate=["inotify-events"])
        assert any("inotify" in n for n in stats.notes), stats.notes
        _restore(tmp_path, t, restored)
        assert t.readline() == long.decode()
        _append(log, b"third\n")  # a new event: tail reads on from its offset
        assert (t.readline(), t.readline()) == ("second", "third")
        _append(log, b"fourth\n")
        assert t.readline() == "fourth"


def test_tail_f_with_no_event_queued_keeps_following(tmp_path: Path, restored: list[int]) -> None:
    """Once tail printed the last line appended it has read every event: dumped without a tolerance, restored,
    and lines appended afterwards are printed."""
    from ckpt import api

    with _tail(tmp_path)[0] as t:
        log = tmp_path / "grow.log"
        _append(log, b"second\n")
        assert t.readline() == "second"  # it read the event before the line
        api.dump(t.pid, tmp_path / "img")
        _restore(tmp_path, t, restored)
        for line in ("third", "fourth"):
            _append(log, line.encode() + b"\n")
            assert t.readline() == line


class _Pty:
    """A pseudo-terminal this test owns: the master read for what programs print on the slave."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.seen = b""

    def wait_for(self, pattern: bytes) -> re.Match[bytes]:
        """Read the master until ``pattern`` (a regex) matches what was printed since the last match."""
        deadline = time.monotonic() + HANG_GUARD
        while (m := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} on the terminal: {self.seen[-2000:]!r}"
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536)
        self.seen = self.seen[m.end():]
        return m

    def run(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """``argv`` leading a new session whose controlling terminal is this one (setsid -c), on its stdio."""
        return subprocess.Popen(["setsid", "-c", *argv], stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                close_fds=True)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def _get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=HANG_GUARD) as resp:
        return resp.read()


def test_http_server_as_a_shell_job(tmp_path: Path) -> None:
    """A job (its own process group) of a shell on a terminal: dumped with --shell-job, restored with
    --shell-job by a ckpt on another terminal, which stays its parent; it answers a GET and logs it there."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("restored page\n")
    first, second = _Pty(), _Pty()
    shell = restorer = None
    job = 0
    try:
        shell = first.run(["bash", "-c", f"set -m; cd {tmp_path / 'www'}; {sys.executable} -m http.server "
                                         "--bind 127.0.0.1 0 & echo JOB $!; wait"])
        job = int(first.wait_for(rb"JOB (\d+)").group(1))
        port = int(first.wait_for(rb"Serving HTTP on 127\.0\.0\.1 port (\d+)").group(1))
        assert os.getpgid(job) == job != os.getsid(job) == shell.pid  # a job of the shell's session
        assert _get(port) == b"restored page\n"

        img = tmp_path / "img"
        res = subprocess.run([*CKPT, "dump", "-t", str(job), "-D", str(img)], capture_output=True, text=True,
                             timeout=HANG_GUARD)
        assert res.returncode == 1 and "--shell-job" in res.stderr, res.stderr  # its terminal needs the flag
        res = subprocess.run([*CKPT, "dump", "--shell-job", "-t", str(job), "-D", str(img)], capture_output=True,
                             text=True, timeout=HANG_GUARD)
        assert res.returncode == 0, res.stderr
        shell.wait(timeout=HANG_GUARD)  # its job gone, the shell's `wait` returned

        restorer = second.run([*CKPT, "restore", "--shell-job", "-D", str(img)])
        assert _wait_for_listener(job, restorer, port), "the restored server did not come back"
        assert _get(port) == b"restored page\n"
        second.wait_for(rb'"GET / HTTP/1\.1" 200')  # its log went to the restorer's terminal
        assert os.getsid(job) == restorer.pid
    finally:
        kill_all([job] if job else [])
        if shell is not None and shell.poll() is None:
            shell.kill()
        for p in (shell, restorer):  # the restorer exits with its restored child
            if p is not None:
                p.wait(timeout=HANG_GUARD)
        first.close()
        second.close()


def _wait_for_listener(pid: int, restorer: subprocess.Popen[bytes], port: int) -> bool:
    """Until process ``pid`` exists again as the restorer's child and accepts on ``port`` (its restore done:
    the helper that becomes it has the pid, untraced and sleeping, before the restore has even begun), or
    the restorer exited."""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline and restorer.poll() is None:
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            if int(fields["PPid"]) == restorer.pid and int(fields["TracerPid"]) == 0 and \
                    fields["State"].split()[0] in ("S", "R"):
                with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD):
                    return True
        except (FileNotFoundError, ProcessLookupError, KeyError, ValueError, ConnectionRefusedError):
            pass
        time.sleep(0.01)
    return False
