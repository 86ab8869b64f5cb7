"""Full dump and restore of the workload (issue 3): wall and frozen time, GB/s, image bytes, peak RSS.

Each dump and restore runs as its own ``ckpt`` process, exactly as a user runs
it; its peak RSS is the ``peak_rss_bytes`` it reports in ``--json-stats``
(VmHWM, its own), not ``wait4``'s ru_maxrss, which would carry over the bench's
own high-water mark (a 1 GiB buffer) through fork and exec.  Frozen time and the
phase timings come from ``--json-stats``.  Rates count the workload's memory
(the bytes a dump must read).  A dump is compared with zstd -1 on one thread,
its real ceiling on this machine (memory reads are ~5x faster); a restore with
zstd decompression into pre-faulted memory.

Rows: a dump with ``-R`` of the shared workload; then, on a fresh workload of
the same size (it must end to free its pid), a dump that ends it and a restore
of that image under the same pid; the same pair for an 8-thread workload, and
for an image stored with ``--no-compress`` (the case CRIU's restore figure is
for; its restore is compared with faulting in fresh memory).  ``dump.encrypted``/``restore.encrypted``
(``--only dump.dump_encrypted``): the same pair for incompressible memory, the image sealed with
``--encrypt-key`` (AES-256-GCM, ckpt/image/sealing.py), beside ``dump.random``/``restore.random``, the same
memory stored in clear: the cost of encryption at rest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.framework import Context, Row, bench
from bench.workload import Workload

REPO = Path(__file__).resolve().parent.parent


def _ckpt(*args: str) -> tuple[float, int, dict]:
    """Run ``ckpt ARGS --json-stats`` in a child; (wall seconds, peak RSS bytes, stats)."""
    stats_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ckpt-bench-stats-{os.getpid()}.json"
    argv = [sys.executable, "-m", "ckpt.cli", *args, "--json-stats", str(stats_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=REPO)
    proc.wait()
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    stats = json.loads(stats_path.read_text())
    stats_path.unlink()
    return wall, stats["peak_rss_bytes"], stats


def _image_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def _kill_restored(pid: int) -> None:
    """End a detached restored workload (not our child) and wait until its pid is free."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _notes(stats: dict, rss: int, image: int | None = None) -> str:
    parts = [f"frozen {stats['frozen_seconds'] * 1e3:.0f} ms"] if "frozen_seconds" in stats else []
    if image is not None:
        parts.append(f"image {image / 2**20:.0f} MiB")
    parts.append(f"peak RSS {rss / 2**20:.0f} MiB")
    return ", ".join(parts)


def _dump_restore_pair(ctx: Context, key: str, label: str, workload: Workload, *dump_args: str,
                       restore_limit: str = "limit.unzstd1", restore_args: tuple[str, ...] = ()) -> Iterator[Row]:
    """Dump (ending it) and restore one workload; the restored process is killed afterwards."""
    image = ctx.tmpdir / f"dump-{key}"
    shutil.rmtree(image, ignore_errors=True)
    with workload as wl:
        pid, total = wl.pid, wl.total
        wall, rss, stats = _ckpt("dump", "-t", str(pid), "-D", str(image), *dump_args)
        log = wl.forget(keep_log=True)  # ckpt ended it; the pid will be the restored process's (which reopens the log)
    size = _image_bytes(image)
    yield Row(f"dump.{key}", f"ckpt dump, {label}", total, (wall,), baseline="limit.zstd1_t1",
              notes=_notes(stats, rss, size))
    try:
        wall, rss, stats = _ckpt("restore", "-D", str(image), "-d", *restore_args)
        yield Row(f"restore.{key}", f"ckpt restore, {label}", total, (wall,), baseline=restore_limit,
                  notes=f"memory {stats['memory_seconds'] * 1e3:.0f} ms, pid wait {stats['pid_wait_seconds'] * 1e3:.0f} ms, "
                        f"self-check {stats.get('check_seconds', 0) * 1e3:.1f} ms "
                        f"({stats.get('check_seconds', 0) / wall * 100:.1f} % of the restore), "
                        f"peak RSS {rss / 2**20:.0f} MiB")
    finally:
        _kill_restored(pid)
        shutil.rmtree(image, ignore_errors=True)
        if log:
            os.unlink(log)


@bench("dump", order=200)
def dump_and_restore(ctx: Context) -> Iterator[Row]:
    wl = ctx.workload
    image = ctx.tmpdir / "dump-R"
    times, rss, stats, size = [], 0, {}, 0
    for _ in range(ctx.runs):
        shutil.rmtree(image, ignore_errors=True)
        wall, rss, stats = _ckpt("dump", "-t", str(wl.pid), "-D", str(image), "-R")
        times.append(wall)
        size = _image_bytes(image)
    shutil.rmtree(image, ignore_errors=True)
    yield Row("dump.R", "ckpt dump -R (target keeps running)", wl.total, tuple(times), baseline="limit.zstd1_t1",
              notes=_notes(stats, rss, size))
    size_mib = max(1, wl.total >> 20)
    yield from _dump_restore_pair(ctx, "1t", "1 thread", Workload(size_mib))
    yield from _dump_restore_pair(ctx, "8t", "8 threads", Workload(size_mib, threads=8, rate_mbs=1))
    # What CRIU's restore figure is for: an image stored uncompressed (the restore is then bound
    # by faulting in fresh memory, not by zstd).
    yield from _dump_restore_pair(ctx, "raw", "1 thread, --no-compress", Workload(size_mib), "--no-compress",
                                  restore_limit="limit.fault")


@bench("dump", order=210)
def dump_encrypted(ctx: Context) -> Iterator[Row]:
    """Incompressible memory dumped and restored in clear, then encrypted at rest (issue 18)."""
    size_mib = max(1, ctx.workload.total >> 20)
    yield from _dump_restore_pair(ctx, "random", "1 thread, random memory", Workload(size_mib, mix=(0, 0, 100)))
    key = ctx.tmpdir / "image.key"
    key.unlink(missing_ok=True)
    _ckpt_plain("keygen", "--encryption", str(key))
    try:
        yield from _dump_restore_pair(ctx, "encrypted", "1 thread, random memory, --encrypt-key",
                                      Workload(size_mib, mix=(0, 0, 100)), "--encrypt-key", str(key),
                                      restore_args=("--encrypt-key", str(key)))
    finally:
        key.unlink(missing_ok=True)


def _ckpt_plain(*args: str) -> None:
    """Run ``ckpt ARGS`` (no stats); raise with its error if it fails."""
    res = subprocess.run([sys.executable, "-m", "ckpt.cli", *args], capture_output=True, text=True, cwd=REPO,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
