"""Live migration of the workload (issue 5): downtime, total time, rounds, bytes on the wire; stop-and-copy as baseline.

Each migration moves a fresh workload (a migrated one ends on the source) from
this host to a second host on this machine (tests/hosts.py: a network + PID +
mount namespace, so the process keeps its pid there while the source still
exists).  Both sides are the real CLI, as a user runs them: ``ckpt receive
--once`` inside the second host, ``ckpt migrate`` here, each with
``--json-stats``.  The migrated process is checked to run on at the
destination (it answers SIGUSR1 in its log), then the second host's teardown
kills it along with the receiver.

Rows (the issue's target: downtime ≤ 100 ms at 20 MB/s for 1 GiB, ≥ 10× lower
than stop-and-copy in the same run):

* ``migrate.20mbs`` / ``migrate.100mbs``: pre-copy (default ``--max-downtime
  100``) of the workload writing 20 / 100 MB/s of pages;
* ``migrate.stop_and_copy``: ``ckpt migrate --stop-and-copy`` (freeze, one
  full image, send, restore) of the workload writing 20 MB/s.

A row's *time* is the **downtime** (freeze at the source to "running" at the
destination, as ``ckpt migrate`` measures it) and its size the workload's
memory, the same for every row, so the framework's ratio against the baseline
row (``migrate.stop_and_copy``) reads as stop-and-copy downtime ÷ this row's
downtime.  The notes give the predicted downtime, the pre-copy rounds (pages
per round, why they stopped), bytes on the wire against the workload's RSS,
the total time of the migration, the restore time the destination reported
(staged or plain, when the receiver says) and the rest of the switch-over
(downtime − restore: the final dump, its transfer, the messages).  With
``--runs N`` the three cases are interleaved (baseline, 20, 100, baseline, …)
so a drift of the machine hits them alike; the notes are the median run's.

Both sides share this machine's cores and memory: the destination's work
(receiving, restoring) competes with the source's pre-copy rounds, which two
real hosts would not.  On a VM whose freed memory goes back to the host (a
virtio-balloon with free page reporting), the restore's first touch of fresh
memory is several times slower than in a warm process; that is part of the
destination's restore time here.  Scratch files (token, stats, the source's
work directory, the received images) live in a private directory under
``--disk-dir``.

Everything is cleaned up on every exit path: ``ckpt migrate`` is killed if
still running, the source workload is killed (Workload), the receiver and the
restored process die with the second host's PID namespace (SecondHost), and
the scratch directory (token, stats, received images) and the workload's log
are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.framework import Context, Row, bench
from bench.workload import Workload

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

#: The port ``ckpt receive`` listens on, at the second host's own address (its own network namespace).
PORT = 7070
#: The issue's target for the pre-copy downtime at 20 MB/s.
TARGET_DOWNTIME_MS = 100.0
TARGET_RATIO = 10.0
#: Generous: a stop-and-copy of 1 GiB, or many pre-copy rounds, take seconds.
MIGRATE_TIMEOUT = 600.0


def _hosts() -> Any:
    """tests/hosts.py, imported from the tests directory (it is not a package)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import hosts

    return hosts


def _second_host() -> Any:
    """A started SecondHost; its ``pytest.skip`` (a BaseException) becomes a RuntimeError (an error row)."""
    import pytest

    host = _hosts().SecondHost()
    try:
        host.start()
    except pytest.skip.Exception as exc:
        raise RuntimeError(f"no second host here: {exc.msg}") from None
    return host


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def _wait_for(cond: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.01)


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def _runs_on(host: Any, pid: int, log: str) -> None:
    """The migrated workload runs at the destination under its pid: it answers SIGUSR1 in its log."""
    host_pid = host.host_pid(pid)
    before = Path(log).read_bytes().count(b"WRITTEN")
    os.kill(host_pid, signal.SIGUSR1)
    _wait_for(lambda: Path(log).read_bytes().count(b"WRITTEN") > before,
              f"the migrated workload (pid {pid} there) answers SIGUSR1", timeout=10)


def _run_migrate(argv: list[str], env: dict[str, str], err_path: Path) -> None:
    """``ckpt migrate`` to completion; killed (and reaped) if anything, Ctrl-C included, interrupts the wait."""
    with open(err_path, "wb") as err:
        mig = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                               close_fds=True, cwd=REPO, env=env)
    try:
        rc = mig.wait(timeout=MIGRATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"ckpt migrate did not end within {MIGRATE_TIMEOUT:.0f} s") from None
    finally:
        if mig.poll() is None:  # before the workload and the second host go: nothing may act on them any more
            mig.kill()
            mig.wait()
    if rc != 0:
        raise RuntimeError(f"ckpt migrate failed ({rc}): {_tail(err_path)}")


def _migrate_once(ctx: Context, key: str, size_mib: int, rate_mbs: float, *extra: str) -> dict[str, Any]:
    """One migration of a fresh workload to a fresh second host: ckpt migrate's stats plus a few facts."""
    from ckpt.migrate.wire import save_token

    hosts = _hosts()
    # Unique (mkdtemp, 0700): another bench run on this machine must not share or remove it.
    scratch = Path(tempfile.mkdtemp(prefix=f"migrate-{key}-", dir=ctx.tmpdir))
    log: str | None = None
    try:
        token = scratch / "token"
        save_token(token)
        rx_stats, rx_err = scratch / "receive.json", scratch / "receive.err"
        stats_path = scratch / "migrate.json"
        # Exit order: the workload (the source, if it still runs) is killed, then the second host
        # (the receiver and the migrated copy die with its PID namespace).
        with _second_host() as host, Workload(size_mib, rate_mbs=rate_mbs) as wl:
            pid, total, rss = wl.pid, wl.total, _rss(wl.pid)
            with open(rx_err, "wb") as err:
                rx = host.run(hosts.ckpt_argv("receive", "--listen", f"{host.address}:{PORT}", "-D", scratch / "rx",
                                              "--token-file", token, "--once", "--json-stats", rx_stats),
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
            _wait_for(lambda: "listening on" in rx_err.read_text(errors="replace") or rx.poll() is not None,
                      "ckpt receive listens", timeout=30)
            if rx.poll() is not None:
                raise RuntimeError(f"ckpt receive exited ({rx.returncode}): {_tail(rx_err)}")
            # The source's work directory (its pre-dumps and final image) on the same disk as the rest.
            _run_migrate(hosts.ckpt_argv("migrate", "-t", pid, "--to", f"{host.address}:{PORT}", "--token-file",
                                         token, "--json-stats", stats_path, "-v", *extra),
                         {**os.environ, "TMPDIR": str(scratch)}, scratch / "migrate.err")
            stats = json.loads(stats_path.read_text())
            # ckpt ended the source once the destination ran it; the log stays for the copy there.
            log = wl.forget(keep_log=True)
            try:
                rx.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise RuntimeError("ckpt receive did not exit after the migration") from None
            received = json.loads(rx_stats.read_text()) if rx_stats.exists() else {}
            if received.get("outcome") != "running":
                raise RuntimeError(f"the destination says {received.get('outcome')!r}: {_tail(rx_err)}")
            if not stats.get("switched") or log is None:
                raise RuntimeError(f"ckpt migrate did not switch over: {stats.get('reason')!r}")
            _runs_on(host, pid, log)
        return {**stats, "rss": rss, "total": total, "received": received}
    finally:
        if log:
            try:
                os.unlink(log)
            except FileNotFoundError:
                pass
        shutil.rmtree(scratch, ignore_errors=True)


def _notes(s: dict[str, Any], downtimes: list[float]) -> str:
    mib = 2**20
    parts = [f"downtime {s['downtime_ms']:.0f} ms"]
    if s["iterations"]:
        parts.append(f"predicted {s['predicted_downtime_ms']:.0f} ms")
        rounds = "/".join(str(r["pages"]) for r in s["rounds"])
        parts.append(f"{s['iterations']} rounds (pages {rounds}; {s['reason']})")
    else:
        parts.append(s["reason"])
    parts.append(f"final image {s['final_pages']} pages, {s['final_bytes'] / mib:.1f} MiB on the wire")
    parts.append(f"wire {s['bytes_sent'] / mib:.0f} MiB = {s['bytes_sent'] / s['rss']:.2f}× RSS "
                 f"({s['rss'] / mib:.0f} MiB)")
    parts.append(f"total {s['total_ms'] / 1e3:.2f} s")
    rx = s.get("received", {})
    how = ""
    if "staged" in rx:  # a receiver that stages the pre-copy images says whether the switch-over used them
        how = "staged, " if rx["staged"] else f"plain ({rx.get('staging') or 'not staged'}), "
    parts.append(f"restore at the destination {how}{s['restore_ms']:.0f} ms "
                 f"(rest of the switch-over {s['downtime_ms'] - s['restore_ms']:.0f} ms)")
    if len(downtimes) > 1:
        parts.append("downtimes " + "/".join(f"{d * 1e3:.0f}" for d in downtimes) + " ms")
    return ", ".join(parts)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose downtime is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda s: s["downtime_ms"])
    return ordered[(len(ordered) - 1) // 2]


def _row(key: str, what: str, runs: list[dict[str, Any]], baseline: str | None = None,
         extra_note: str = "") -> Row:
    downtimes = [s["downtime_ms"] / 1e3 for s in runs]
    s = _median_run(runs)
    notes = _notes(s, downtimes) + (f"; {extra_note}" if extra_note else "")
    return Row(f"migrate.{key}", what, s["total"], tuple(downtimes), baseline=baseline, notes=notes)


#: key → (what, MB/s written by the workload, extra ckpt migrate arguments); the baseline first.
CASES = {
    "stop_and_copy": ("ckpt migrate --stop-and-copy, 20 MB/s written (downtime)", 20, ("--stop-and-copy",)),
    "20mbs": ("ckpt migrate, 20 MB/s written (downtime)", 20, ()),
    "100mbs": ("ckpt migrate, 100 MB/s written (downtime)", 100, ()),
}
BASELINE = "stop_and_copy"


@bench("migrate", order=400)
def migration(ctx: Context) -> Iterator[Row]:
    size_mib = max(1, ctx.workload.total >> 20)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in CASES}
    errors: dict[str, str] = {}
    # Interleaved (baseline, 20, 100, baseline, …): a drift of the machine hits every case alike.
    for _ in range(ctx.runs):
        for key, (_what, rate, extra) in CASES.items():
            if key in errors:
                continue
            try:
                runs[key].append(_migrate_once(ctx, key, size_mib, rate, *extra))
            except Exception as exc:  # noqa: BLE001 - this row's error; the other cases still run
                errors[key] = f"{type(exc).__name__}: {exc}"
    base = runs[BASELINE] if BASELINE not in errors else []
    base_ms = statistics.median(s["downtime_ms"] for s in base) if base else None
    for key, (what, rate, _extra) in CASES.items():
        if key in errors:
            yield Row(f"migrate.{key}", what, ctx.workload.total, (), error=errors[key])
            continue
        if key == BASELINE:
            yield _row(key, what, runs[key])
            continue
        down_ms = statistics.median(s["downtime_ms"] for s in runs[key])
        note = f"{base_ms / down_ms:.1f}× shorter than stop-and-copy" if base_ms else ""
        if rate == 20:
            met = down_ms <= TARGET_DOWNTIME_MS and base_ms is not None and base_ms / down_ms >= TARGET_RATIO
            note += (f"; target (≤ {TARGET_DOWNTIME_MS:.0f} ms, ≥ {TARGET_RATIO:.0f}× stop-and-copy) "
                     f"{'met' if met else 'MISSED'}")
        yield _row(key, what, runs[key], baseline=f"migrate.{BASELINE}", extra_note=note)
