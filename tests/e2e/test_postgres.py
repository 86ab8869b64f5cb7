"""PostgreSQL (postmaster and its background workers, as the postgres user) checkpointed with a client connected.

The test makes its own cluster (initdb into a directory of the postgres user's,
loopback port, fsync off) and starts the postmaster itself, so it is the root of
the dumped tree.  Between the processes: the main shared memory (a shared
anonymous mapping plus a small System V segment), the dynamic shared memory
segments in /dev/shm, the postmaster's pipes and signals, a latch per process.
The client, ``psql`` outside the tree, opens a transaction over TCP before the
dump; the dump keeps its connection (``--tcp-established``), the restore brings
the backend back with the connection's queues, and the transaction commits after
the restore.  A new connection afterwards proves the restored postmaster forks
backends that work.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt import api
from targets import tracer_of, wait_until
from test_migrate import _free_port


def _bindir() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


BIN = _bindir()
try:
    import pwd

    PG_USER = pwd.getpwnam("postgres")
except KeyError:
    PG_USER = None
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root (ptrace, clone3 set_tid)"),
    pytest.mark.skipif(BIN is None or PG_USER is None, reason="PostgreSQL is not installed (make installs postgresql)"),
]


def _as_postgres() -> dict:
    return {"user": PG_USER.pw_uid, "group": PG_USER.pw_gid, "extra_groups": [], "close_fds": True,
            "env": {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(tempfile.gettempdir())}}


class _Psql:
    """A psql client over a pipe; ``ask`` sends statements and returns the rows they printed (-At)."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([BIN / "psql", "-h", "127.0.0.1", "-p", str(port), "-d", "postgres", "-X", "-q",
                                      "-At"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     **_as_postgres())
        self.pending = b""  # read from the pipe, not yet returned (select sees only what is still in the pipe)

    def ask(self, sql: str, timeout: float = 60) -> list[str]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{sql}\nselect 'END-OF-ANSWER';\n".encode())  # a result is flushed, an echo is not
        self.proc.stdin.flush()
        out = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"END-OF-ANSWER\n" not in self.pending:
            if not select.select([out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise AssertionError(f"psql gave no answer to {sql!r} (so far: {self.pending!r})")
            chunk = os.read(out, 65536)
            if not chunk:
                raise AssertionError(f"psql ended (exit {self.proc.wait()}) after {self.pending!r}")
            self.pending += chunk
        answer, _, self.pending = self.pending.partition(b"END-OF-ANSWER\n")
        return answer.decode().splitlines()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class _Cluster:
    """initdb + a postmaster (the test's child, its own session) on a loopback port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ckpt-pg-"))  # postgres must reach it: not under pytest's 0700 tmp
        os.chown(self.dir, PG_USER.pw_uid, PG_USER.pw_gid)
        self.data, self.port = self.dir / "data", _free_port()
        subprocess.run([BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync"],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, **_as_postgres())
        self.proc = subprocess.Popen([BIN / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.dir,
                                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                      "-c", "shared_buffers=16MB"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "log", "w"), start_new_session=True, **_as_postgres())
        self.pid = self.proc.pid
        wait_until(lambda: self.query("select 1") == ["1"], "postgres accepts connections", timeout=60)

    def query(self, sql: str) -> list[str] | None:
        """``sql`` on a new connection: its rows, or None if it failed."""
        p = subprocess.run([BIN / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-d", "postgres", "-X", "-At",
                            "-c", sql], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                           **_as_postgres())
        return p.stdout.splitlines() if p.returncode == 0 else None

    def children(self) -> list[int]:
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return sorted(int(p) for p in f.read().split())
        except OSError:
            return []

    def client_backends(self) -> int:
        """How many of the postmaster's children serve a client (``postgres: USER DB HOST(PORT) ...``)."""
        n = 0
        for p in self.children():
            try:
                n += "127.0.0.1(" in Path(f"/proc/{p}/cmdline").read_text()
            except OSError:
                pass
        return n

    def stop(self) -> None:
        """A fast shutdown (SIGINT): the postmaster removes its shared memory last; SIGKILL if it does not end."""
        children = self.children()

        def ended() -> bool:  # our child, first started or restored
            try:
                return os.waitpid(self.pid, os.WNOHANG)[0] == self.pid
            except ChildProcessError:
                return True

        try:
            os.kill(self.pid, signal.SIGINT)
            wait_until(ended, "postgres shut down", timeout=30)
        except (ProcessLookupError, AssertionError):
            for p in [self.pid, *children]:  # not reaped yet: the pids are still theirs
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ended()
            for shm in Path("/dev/shm").glob("PostgreSQL.*"):  # its dynamic shared memory, left by a SIGKILL
                if shm.stat().st_uid == PG_USER.pw_uid:
                    shm.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[_Cluster]:
    c = _Cluster()
    try:
        yield c
    finally:
        c.stop()


def test_a_transaction_begun_before_the_dump_commits_after_the_restore(cluster: _Cluster, tmp_path: Path,
                                                                       restored: list[int]) -> None:
    assert cluster.query("create table t (x int); insert into t values (1)") == ["CREATE TABLE", "INSERT 0 1"]
    client = _Psql(cluster.port)
    try:
        (backend,) = client.ask("begin; insert into t values (2); select pg_backend_pid();")
        assert cluster.query("select count(*) from t") == ["1"]  # not committed: others do not see it
        wait_until(lambda: cluster.client_backends() == 1, "the other connections' backends exited")
        background = cluster.children()  # checkpointer, background writer, walwriter, launchers (and workers)
        assert int(backend) in background and len(background) >= 6, (backend, background)

        stats = api.dump(cluster.pid, tmp_path / "img", tcp_established=True)
        cluster.proc.returncode = -signal.SIGKILL  # killed and reaped by the dump
        r = api.restore(tmp_path / "img")  # the self-check compared every process, fd and socket first
        assert r.pid == cluster.pid and len(r.processes) == stats.processes + stats.zombies and stats.processes >= 7
        assert int(backend) in r.processes and all(tracer_of(p) == 0 for p in r.processes)

        assert client.ask("insert into t values (3); commit; select count(*), pg_backend_pid() from t;") == [
            f"3|{backend}"]  # the same backend, its transaction carried over
        assert cluster.query("select count(*) from t") == ["3"]  # a backend the restored postmaster forked
        assert cluster.query("select count(*) from pg_stat_activity where backend_type = 'client backend'") == ["2"]
    finally:
        client.close()
