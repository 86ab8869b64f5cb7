"""Copy-on-write sharing across fork (issue 17): a forked tree's summed Pss before a dump and after its restore.

The issue: "Measure the tree's summed PSS before the dump and after the restore
in the bench: goal ≤ 1.05×."  The target is tests/scenarios/cow_tree.c: a
parent with ``--tree-mib`` MiB (64; 4 with ``--quick``) of private memory
filled before it forks three children, each of which then writes 8 pages of
it — the rest is one physical copy for the four, as in a pre-fork server.
Pss (``/proc/PID/smaps_rollup``) charges each process its share of every page,
so the tree's sum counts the memory once however many processes share it.
Rows, through the API in this process (as bench/incremental.py's):

* ``cow.dump_leave_running``: ``dump -R`` of the running tree; the notes give
  its Pss before and after (it must not grow: reading a shared page must not
  copy it, ckpt.resources.cow).
* ``cow.restore``: ``dump`` (ending the tree), then ``restore`` of its image;
  the notes give the Pss ratio, restored ÷ original (goal ≤ 1.05), and the
  pages the image stored.  After the restore every process checks every word
  of its memory (the scenario's PASS line), else the row fails.

Every process started is killed by its pid on every exit path (the restored
root is our child and reaped); images live in a private directory under
``--disk-dir``, removed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.framework import Context, Row, bench
from bench.workload import BenchChild, build_c

__all__ = ["CowTree", "tree_pss", "GOAL"]

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "scenarios" / "cow_tree.c"
BINARY = Path(__file__).resolve().parent / "bin" / "cow_tree"
#: Restored Pss over the original's that the issue asks for.
GOAL = 1.05


def tree_pss(pids: list[int]) -> int:
    """Summed Pss of ``pids``, in bytes."""
    total = 0
    for p in pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            m = re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M)
        total += int(m.group(1)) * 1024 if m else 0
    return total


class CowTree(BenchChild):
    """A running cow_tree (parent + 3 children sharing ``size_mib`` MiB); ``pids`` is the root first."""

    what = "cow tree"

    def __init__(self, size_mib: int, ready_timeout: float = 120.0) -> None:
        self.size_mib, self.ready_timeout = size_mib, ready_timeout
        self.proc = None
        self.pids: list[int] = []
        self.restored: int | None = None  # the restored root, our child

    def start(self) -> "CowTree":
        binary = build_c(SCENARIO, BINARY, cc="gcc", deps=(SCENARIO.parent / "verdict.h",))
        self._spawn_logged([str(binary), str(self.size_mib)])
        try:
            words = self._readline(time.monotonic() + self.ready_timeout).split()
            if words[:1] != ["READY"]:
                raise RuntimeError(f"cow_tree said {' '.join(words)!r}")
            self.pids = [int(p) for p in words[1].removeprefix("pids=").split(",")]
        except BaseException:
            self.stop()
            raise
        return self

    def check(self) -> None:
        """One round: every process checks every word of its memory."""
        os.kill(self.pids[0], signal.SIGUSR1)
        line = self._readline(time.monotonic() + 30)
        if not line.startswith("PASS"):
            raise RuntimeError(f"cow_tree: {line}")

    def dumped(self) -> None:
        """A dump ended the tree: reap the root, our child (the log stays for the restore)."""
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None

    def _gone(self) -> str | None:
        if self.proc is None and self.restored is None:
            return "cow tree root is gone"
        return super()._gone()

    def stop(self) -> None:
        for pid in self.pids:  # by pid: the children are not ours to reap, init does
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.restored is not None:
            try:
                os.waitpid(self.restored, 0)
            except ChildProcessError:
                pass
            self.restored = None
        if self.proc is not None:
            super().stop()
        self._close_log()
        self._forgotten()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@bench("cow", order=330, workload=False)
def cow_tree_pss(ctx: Context) -> Iterator[Row]:
    """dump -R and dump + restore of a forked tree: its summed Pss before and after each."""
    from ckpt import api

    scratch = Path(tempfile.mkdtemp(prefix="bench-cow-", dir=ctx.tmpdir))
    try:
        with CowTree(ctx.tree_mib) as tree:
            size = ctx.tree_mib << 20
            before = tree_pss(tree.pids)
            t0 = time.perf_counter()
            api.dump(tree.pids[0], scratch / "running", leave_running=True)
            took = time.perf_counter() - t0
            after = tree_pss(tree.pids)
            tree.check()
            yield Row("cow.dump_leave_running", f"ckpt dump -R, 4 processes sharing {_mib(size)}", size, (took,),
                      notes=f"tree Pss {_mib(before)} before, {_mib(after)} after ({after / before:.3f}×)")
            before = tree_pss(tree.pids)
            stats = api.dump(tree.pids[0], scratch / "img")
            tree.dumped()
            for p in tree.pids:  # the children are orphans init reaps: their pids must be free
                while os.path.exists(f"/proc/{p}"):
                    time.sleep(0.001)
            t0 = time.perf_counter()
            r = api.restore(scratch / "img")
            took = time.perf_counter() - t0
            tree.restored = r.pid
            restored = tree_pss(tree.pids)
            tree.check()
            ratio = restored / before
            verdict = "meets" if ratio <= GOAL else "MISSES"
            yield Row("cow.restore", f"ckpt restore, 4 processes sharing {_mib(size)}", size, (took,),
                      notes=f"tree Pss ratio {ratio:.3f} (restored {_mib(restored)} / dumped {_mib(before)}), "
                            f"{verdict} the goal ≤ {GOAL}; image stored {stats.pages_stored} pages "
                            f"({_mib(stats.pages_stored * 4096)}) for {_mib(4 * size)} mapped")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
