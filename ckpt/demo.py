"""``make demo`` / ``ckpt demo``: a short, real incremental checkpoint → restore of a live process.

Steps: ``ckpt check`` on this machine; a sample Python process (64 MiB of
patterned memory, counting into a log file) is pre-dumped twice while it runs
(the second copies only what it wrote since the first), then dumped as a
frozen delta and ended, and restored from the chain under the same pid; it
carries on counting from where it was, and on SIGUSR1 re-checks every page of
its pattern and logs PASS or FAIL.  Everything goes through the same API the
``ckpt`` command uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

__all__ = ["main", "SAMPLE"]

#: The sample: logs a counter to stdout (a file), keeps a 64 MiB pattern, checks it on SIGUSR1.
SAMPLE = textwrap.dedent("""
    import os, signal, sys, time
    blob = bytearray(64 << 20)
    for i in range(0, len(blob), 4096):
        blob[i:i + 8] = i.to_bytes(8, "little")
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
    n = 0
    print("READY", os.getpid(), flush=True)
    while True:
        n += 1
        if n % 100 == 0:
            print("count", n, flush=True)
        if asked:
            asked.clear()
            bad = sum(blob[i:i + 8] != i.to_bytes(8, "little") for i in range(0, len(blob), 4096))
            print("PASS" if bad == 0 else f"FAIL {bad} pages", "pid", os.getpid(), "count", n, flush=True)
        time.sleep(0.002)
""")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _wait_for(log: Path, predicate, timeout: float = 10.0) -> str | None:
    """The last log line that satisfies ``predicate``, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [ln for ln in log.read_text().splitlines() if predicate(ln)]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    return None


def _mib(path: Path) -> str:
    return f"{sum(f.stat().st_size for f in path.iterdir()) / 2**20:.1f} MiB"


def _last_count(log: Path) -> int:
    line = _wait_for(log, lambda ln: ln.startswith("count "))
    return int(line.split()[1]) if line else -1


def main() -> int:
    from . import api

    _step("ckpt check: what this kernel offers, found by trying it")
    report = api.check()
    print(report.format_table())
    if not report.can_dump_restore:
        print("\nthis machine cannot run ckpt; stopping the demo", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="ckpt-demo-"))
    log = work / "sample.log"
    images = work / "3"
    pid = -1
    _step(f"start a sample process (Python, 64 MiB of patterned memory, counting into {log})")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SAMPLE], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
    pid = proc.pid
    try:
        if not _wait_for(log, lambda ln: ln.startswith("READY")):
            print("the sample process did not start", file=sys.stderr)
            return 1
        time.sleep(0.5)
        before = _last_count(log)
        print(f"pid {pid}, counter at {before}")

        _step("ckpt pre-dump, twice, while it keeps running (memory only; tracking starts with the first)")
        first = api.pre_dump(pid, work / "1")
        time.sleep(0.3)
        second = api.pre_dump(pid, work / "2", prev_images_dir=work / "1")
        for p, s in (("1", first), ("2", second)):
            print(f"{work / p}: {'all pages' if s.full else 'pages written since the parent'} [{s.method}]: "
                  f"{s.pages_stored} copied, {s.pages_parent} left in the parent, "
                  f"image {_mib(work / p)}; {s.total_seconds * 1e3:.0f} ms")

        _step(f"ckpt dump -t {pid} -D {images} --prev-images-dir ../2   (frozen: the last delta + all other state; ends it)")
        stats = api.dump_delta(pid, images, prev_images_dir=work / "2")
        proc.wait()  # we are its parent: collect it so the pid can be reused
        print(f"{stats.threads} thread(s), {stats.vmas} VMAs, {stats.pages_stored} pages copied; "
              f"frozen {stats.frozen_seconds * 1e3:.0f} ms; image {_mib(images)}")
        for note in stats.notes:
            print(f"note: {note}")
        print(f"process {pid} is gone: {not Path(f'/proc/{pid}').exists()}")

        _step("ckpt verify and ckpt show (summary)")
        print(api.verify(images).summary())
        print("\n".join(api.show(images).splitlines()[:6]))

        _step(f"ckpt restore -D {images} -d   (replays 1 → 2 → 3; same pid, detached)")
        rstats = api.restore(images, detached=True)
        print(f"restored as pid {rstats.pid} (the same: {'yes' if rstats.pid == pid else 'NO'}) "
              f"in {rstats.total_seconds * 1e3:.0f} ms")
        time.sleep(0.5)
        after = _last_count(log)
        print(f"counter now at {after}: {'it carries on from where it was' if after > before else 'NOT RUNNING'}")

        _step("send SIGUSR1: the sample re-checks every page of its pattern")
        os.kill(pid, signal.SIGUSR1)
        verdict = _wait_for(log, lambda ln: ln.startswith(("PASS", "FAIL")))
        print(verdict or "no answer from the sample")

        ok = rstats.pid == pid and after > before and bool(verdict and verdict.startswith("PASS"))
        _step("summary")
        print("PASS: pre-dumped twice, dumped a delta, restored the chain under the same pid, memory intact, "
              "still running" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=0)  # reaps it only if it is still our child
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
