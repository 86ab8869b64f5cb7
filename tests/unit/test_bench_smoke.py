"""`make bench` smoke tests: the harness runs, reports, and never leaves a workload behind.

No timing assertions: these run on loaded CI machines too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.workload import WORKLOAD_BIN, Workload, build_workload  # noqa: E402


def _workload_pids() -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe") == str(WORKLOAD_BIN):
                    out.add(int(name))
            except OSError:
                pass
    return out


def test_quick_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    before = _workload_pids()
    out_json = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(out_json),
                           "--disk-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "| what | size | time | rate | ratio | vs limit | notes |" in table
    for label in ("process_vm_readv → pre-faulted buffer", "memmove", "zstd -1, 1 thread", "zstd -3, 2 threads",
                  "write + fsync", "heap-like only"):
        assert label in table, label
    data = json.loads(out_json.read_text())
    assert {"kernel", "cpu_model", "cores", "date", "thp"} <= data["machine"].keys()
    assert data["config"]["quick"] is True and data["config"]["size_mib"] == 64
    rows = {r["key"]: r for r in data["rows"]}
    for key in ("limit.pvr", "limit.procmem", "limit.memmove", "limit.fault", "limit.zstd1_t1", "limit.zstd1_t2",
                "limit.zstd3_t1", "limit.zstd3_t2", "limit.unzstd1", "limit.fsync"):
        assert key in rows and rows[key]["error"] is None, key
        assert rows[key]["nbytes"] > 0 and rows[key]["rate_bytes_per_s"] > 0
    assert rows["limit.zstd1_random"]["ratio"] < 1.05 < rows["limit.zstd1_heap"]["ratio"]
    assert not list(tmp_path.glob(".bench-disk-*"))  # the disk test leaves nothing behind
    assert _workload_pids() <= before


def test_sigint_kills_the_workload(tmp_path: Path) -> None:
    # Many runs per row so the bench is surely still busy when the signal comes.
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--runs", "500",
                             "--json", str(tmp_path / "r.json"), "--disk-dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "workload pid" in line, line
        wl_pid = int(line.split("workload pid ")[1].split(",")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130  # a hang guard: once seen to take over 60 s on a loaded machine
        assert not os.path.exists(f"/proc/{wl_pid}")  # killed *and* reaped
        assert not (tmp_path / "r.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_workload_context_kills_on_error() -> None:
    with pytest.raises(ZeroDivisionError):
        with Workload(8) as wl:
            pid = wl.pid
            assert len(wl.regions) == 3 and wl.total == 8 << 20
            1 / 0
    assert not os.path.exists(f"/proc/{pid}")


def test_workload_writers_report_pages() -> None:
    with Workload(8, rate_mbs=40, threads=2) as wl:
        first, _ = wl.pages_written()
        time.sleep(0.2)
        later, seconds = wl.pages_written()
        assert later > first and seconds > 0


def test_workload_refuses_stray_fds() -> None:
    r, w = os.pipe()
    try:
        p = subprocess.run([str(build_workload()), "-s", "1"], pass_fds=(r,), capture_output=True, text=True,
                           timeout=30)
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == 2 and f"fd {r} is open" in p.stderr


def test_rows_compare_to_limits_in_one_place() -> None:
    from bench.framework import Row, markdown_table, versus

    limit = Row("limit.pvr", "process_vm_readv → pre-faulted buffer", 1 << 30, (0.1, 0.2, 0.1))
    dump = Row("dump.full", "ckpt dump (full)", 1 << 30, (0.125,), baseline="limit.pvr")
    orphan = Row("x", "needs a missing limit", 1, (1.0,), baseline="limit.nope")
    rows = {r.key: r for r in (limit, dump, orphan)}
    assert versus(dump, rows) == "0.80× process_vm_readv → pre-faulted buffer"
    assert versus(limit, rows) == "" and versus(orphan, rows) == "(no limit.nope)"
    table = markdown_table([limit, dump, orphan])
    assert "0.80× process_vm_readv" in table and "best 100.0 ms of 3" in table


def test_a_failing_bench_becomes_an_error_row() -> None:
    from bench.framework import Bench, Context, Row, run_all

    def good(ctx: Context):
        yield Row("g", "good", 10, (1.0,))

    def bad(ctx: Context):
        raise OSError(5, "disk on fire")
        yield  # pragma: no cover

    ctx = Context(size=0, runs=1, quick=True, frame_size=1, workload=None, buffer=None, tmpdir=Path("."))  # type: ignore[arg-type]
    rows = list(run_all(ctx, [Bench("t", 0, bad), Bench("t", 1, good)]))
    assert rows[0].error and "disk on fire" in rows[0].error and rows[1].what == "good"
    assert rows[1].group == "t" and ctx.rows == rows
