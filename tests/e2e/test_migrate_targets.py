"""Live migration of real workloads to a second host (issue 5), through the real CLI on both sides.

* a multi-threaded C writer (scenarios/mig_writer.c) whose threads rewrite
  whole pages at a steady rate; its state follows from the writers' counters,
  and on SIGUSR1 it checks every word of every page and its version table
  against them.  The check runs inside the migrated process, at its old pid in
  the second host: a write made on the source that the migration lost fails
  it.  Its tids are the old ones and every writer goes on.
* redis-server holding 100,000 keys under a pipelined client write load
  (test_incremental_targets' ``_Writer``), migrated with ``--tcp-close``: at
  the destination address the server holds exactly a prefix of the client's
  command stream containing every write that was acknowledged, and a new
  client there reads and writes.  Without ``--tcp-close`` the established
  connection makes the migration fail with the source serving on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from hosts import SecondHost
from targets import build_c, tracer_of, wait_until
from test_incremental_targets import NKEYS, TIMEOUT, _acked_prefix, _connect, _load_keys, _original, _Writer
from test_migrate import _free_port, _migrate, _Mutator, _Receiver, _stores, _token, _untracked
from test_sockets import REDIS, Redis

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="migration needs root (ptrace, clone3, namespaces)")


def _report(what: str, stats: dict) -> None:
    rounds = "/".join(str(r["pages"]) for r in stats["rounds"])
    print(f"migrated {what}: downtime {stats['downtime_ms']} ms (predicted {stats['predicted_downtime_ms']}), "
          f"{stats['iterations']} rounds ({rounds} pages; {stats['reason']}), {stats['bytes_sent'] / 1e6:.1f} MB, "
          f"total {stats['total_ms']} ms, final {stats['final_pages']} pages {stats['final_bytes']} B, "
          f"restore {stats['restore_ms']} ms")


# --- the self-checking C writer ----------------------------------------------------------------------

NPAGES, THREADS, RATE = 8192, 4, 2000  # 32 MiB; 4 threads × 2,000 whole-page writes/s (32 MB/s dirtied)
OWNED = NPAGES // THREADS  # a thread rewrites each of its pages once every OWNED writes


class _CWriter(_Mutator):
    """scenarios/mig_writer.c with its stdout in a file; ``check`` sends SIGUSR1 and wants CHECK PASS."""

    def __init__(self, tmp_path: Path) -> None:  # noqa: D107 - _Mutator's reading, another program
        self.log = tmp_path / "writer.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([build_c("mig_writer"), str(NPAGES), str(THREADS), str(RATE)],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL,
                                         close_fds=True, start_new_session=True)
        self.pid = self.proc.pid
        self.wait_for(r"READY pid=")

    def counts(self, kill=os.kill) -> list[int]:  # noqa: ANN001
        """Check now; the writes each thread had done when it checked."""
        m = self.check(kill)
        return [int(x) for x in re.search(r"writes=([\d,]+)", m.group(2)).group(1).split(",")]


@pytest.mark.parametrize("track", ["uffd-wp", "hash"])
def test_migrate_c_writer(second_host: SecondHost, tmp_path: Path, track: str) -> None:
    host, port, token = second_host, _free_port(), _token(tmp_path)
    t = _CWriter(tmp_path)
    try:
        # The check passes before any migration, once every page has been rewritten at least once.
        wait_until(lambda: min(t.counts()) >= OWNED, "every page was rewritten", timeout=TIMEOUT)
        before = t.counts()
        tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
        assert len(tids) == THREADS + 1
        rx = _Receiver(host, tmp_path, token, port)
        res, stats = _migrate(host, t.pid, port, token, tmp_path, "--track", track, "--max-downtime", "200")
        assert res.returncode == 0, res.stderr
        result = rx.result()
        assert result["outcome"] == "running" and result["source_pid"] == t.pid, result
        t.proc.wait(timeout=10)  # the source was ended once the destination ran the process
        assert t.proc.returncode == -signal.SIGKILL

        assert t.pid in host.processes().values(), host.processes()  # there, under its pid
        assert sorted(int(x) for x in host.check_output(["ls", f"/proc/{t.pid}/task"]).split()) == tids
        assert tracer_of(host.host_pid(t.pid)) == 0

        def kill_there(pid: int, sig: int) -> None:
            host.check_output(["kill", f"-{signal.Signals(sig).name[3:]}", str(pid)])

        # Every page, word by word, and the version table match what the counters say was written.
        after = t.counts(kill_there)
        assert all(a >= b for a, b in zip(after, before, strict=True)), (before, after)
        # Every writer goes on (a check only pauses them at a barrier).
        wait_until(lambda: all(n > a for n, a in zip(t.counts(kill_there), after, strict=True)),
                   "every writer thread writes again", timeout=TIMEOUT)

        assert stats["switched"] and stats["iterations"] >= 2 and stats["rounds"][0]["pages"] >= NPAGES, stats
        _report(f"C writer [{track}]", stats)
        print(f"  writes per thread: {before} at the check before, {after} at the first check there")
    finally:
        t.close()


# --- redis-server under a client write load ----------------------------------------------------------


class _RedisAt(Redis):
    """test_sockets' client, to any address."""

    def __init__(self, address: str, port: int) -> None:  # noqa: D107
        self.sock = socket.create_connection((address, port), timeout=TIMEOUT)
        self.buf = b""


def _start_redis(tmp_path: Path, port: int) -> subprocess.Popen:
    """redis-server on every address of this host, no persistence, stdio on /dev/null (it moves)."""
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind 0.0.0.0\nsave \"\"\nappendonly no\ndaemonize no\ndir {tmp_path}\n"
                    "logfile \"\"\nprotected-mode no\n")
    return subprocess.Popen([REDIS, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_migrate_redis_under_write_load(second_host: SecondHost, tmp_path: Path) -> None:
    # redis listens on 0.0.0.0: the receiver, still listening there while it restores, needs another port
    host, port, rx_port, token = second_host, _free_port(), _free_port(), _token(tmp_path)
    assert rx_port != port
    proc = _start_redis(tmp_path, port)
    writer: _Writer | None = None
    try:
        _load_keys(port, proc.pid)

        writer = _Writer(port)
        writer.start()
        wait_until(lambda: writer.acked >= 3000 or not writer.is_alive(), "the writer got going", TIMEOUT)
        assert writer.is_alive(), writer.error
        rx = _Receiver(host, tmp_path, token, rx_port)
        acked_before = writer.acked
        res, stats = _migrate(host, proc.pid, rx_port, token, tmp_path, "--tcp-close", "--max-downtime", "200")
        assert res.returncode == 0, res.stderr
        result = rx.result()
        assert result["outcome"] == "running" and result["source_pid"] == proc.pid, result
        proc.wait(timeout=10)  # the source redis is gone ...
        assert proc.returncode == -signal.SIGKILL
        writer.join(TIMEOUT)  # ... and with it the writer's connection (it comes back closed over there)
        assert not writer.is_alive(), "the writer did not see its connection end"
    finally:
        if writer is not None:
            writer.finish()
        _stop(proc)
    assert writer.ended and writer.wrong == [], (writer.error, writer.wrong[:5])
    acked, sent = writer.acked, writer.sent
    assert acked > acked_before, "no write was acknowledged while the migration ran"
    with pytest.raises(ConnectionRefusedError):  # nothing serves at the old address any more
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()

    assert proc.pid in host.processes().values(), host.processes()
    r = _RedisAt(host.address, port)  # the client reconnects, to the destination's address
    # Exactly a prefix of the writer's stream is in the server there, and it holds every acked command.
    done, triples_done, incrs = _acked_prefix(r, sent, acked, "migrated")
    # It takes new writes, on the migrated counter, from this client and a second one at the same time.
    assert r.call("INCR", "ctr") == incrs + 1
    assert r.call("SET", "after", "migration") == "OK" and r.call("GET", "after") == b"migration"
    r2 = _RedisAt(host.address, port)
    assert r2.call("INCR", "ctr") == incrs + 2 and r.call("GET", "ctr") == str(incrs + 2).encode()
    assert r2.call("DBSIZE") == NKEYS + triples_done + 2
    r.close()
    r2.close()
    _report("redis under write load", stats)
    print(f"  {acked} writes acked ({acked - acked_before} while `ckpt migrate` ran, {sent} sent, writer "
          f"{'idle' if writer.idle else 'writing'} at the end), {done} in the migrated server")


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (make installs it)")
def test_migrate_established_connection_needs_tcp_close(second_host: SecondHost, tmp_path: Path) -> None:
    host, port, rx_port, token = second_host, _free_port(), _free_port(), _token(tmp_path)
    assert rx_port != port
    proc = _start_redis(tmp_path, port)
    try:
        r = _connect(port, proc.pid)
        assert r.call("SET", "k", "v") == "OK"
        rx = _Receiver(host, tmp_path, token, rx_port)
        res, _ = _migrate(host, proc.pid, rx_port, token, tmp_path)
        assert res.returncode != 0 and "--tcp-close" in res.stderr and "Traceback" not in res.stderr, res.stderr
        result = rx.result()
        assert result["outcome"] != "running" and result["images"] == 0, result  # refused before any round
        assert not _stores(rx.store)  # the receiver removed what it stored
        # The source serves on, untracked, and the client's connection was never touched.
        assert proc.poll() is None and tracer_of(proc.pid) == 0 and _untracked(proc.pid)
        assert r.call("GET", "k") == b"v" and r.call("INCR", "n") == 1
        r.close()
    finally:
        _stop(proc)
