"""Process trees (issue 6): 16 processes × 64 MiB — dump, restore, pre-dumps, and the fixed cost per process.

The issue: "A tree of 16 processes × 64 MiB: dump, restore and one 1 % pre-dump,
wall and frozen time; number of injected syscalls per process.  Target: cost per
process (excluding memory copy) ≤ 5 ms."

The target is bench/tree.c (driven by :class:`Tree`): a root, 3 children, 4
grandchildren under each (16 processes), each with ``--tree-mib`` MiB (64; 4
with ``--quick``) of its own data — bench/fill.h's heap-like content (85 %)
and random bytes (15 %), seeded by its pid, no zero pages — so the bytes
compress like the main workload's.  Every run measures the physical limits
for the same bytes beside ckpt, on the same tree:

* ``tree.limit.pvr``      process_vm_readv of each process into one pre-faulted buffer (one call per process)
* ``tree.limit.zstd1``    zstd -1, one thread, frames of ``--frame-mib`` (the dump rows' baseline)
* ``tree.limit.unzstd1``  decompressing those frames into a pre-faulted frame (the restore row's baseline)
* ``tree.limit.write``    writing the bytes to a file next to the repo (page cache)

Then, with the CLI run as a user runs it (a ``ckpt`` process per command, as
bench/dump.py; its wall time includes the interpreter's start, which the stats'
in-process times do not):

* ``tree.predump.full`` / ``tree.predump.delta_1pct``: the first pre-dump
  (every page; tracking starts in every process) and a delta after each process
  rewrote 1 % of its pages itself (SIGUSR1: one word in every 100th page).
  These go through the API in this process, as bench/incremental.py's do.
* ``tree.dump`` / ``tree.restore``: ``ckpt dump -t ROOT`` (ends the tree; wall,
  frozen in the notes) and ``ckpt restore -d`` of its image; with ``--runs N``
  the restored tree is dumped again.  Between the two the bench waits, untimed,
  until every pid of the dumped tree is free: the root is ours to reap, the
  others are orphans reaped by init, which on this VM takes up to ~1.5 s that
  the restore would otherwise spend in its pid wait.  After every restore the
  bench checks that every pid is back under its parent, and every process
  checks its pid and ppid and its memory against the checksum it keeps (SIGUSR2).
* ``tree.bare.dump`` / ``tree.bare.restore`` and ``tree.per_process.dump`` /
  ``.restore``, the issue's "cost per process (excluding memory copy)": the
  same tree with no data of its own (tree.c -s 0), so there is no memory copy
  to subtract — the in-process time of the command (less a restore's pid
  wait) ÷ 16, nothing taken off.  Each process still has its few pages of
  libc, stack and heap (the notes say how many): those are copied, and
  counted.  The interpreter's start-up is once per command, not per process.
* ``tree.small.dump`` / ``tree.small.restore``: the same for 16 × 1 MiB.  The
  per-process rows' notes also give the figure earlier versions of this row
  used: the 1 MiB tree's in-process time minus the physical copy of its 16 MiB,
  measured on that tree in the same run (process_vm_readv for a dump — its
  compression stays in —, zstd -d into a pre-faulted buffer for a restore),
  ÷ 16; the marginal cost (a 16-process and a 1-process tree of 1 MiB each:
  (T16 − T1) / 15); and the 64 MiB rows give (total − memory time) / 16.
  Target ≤ 5 ms.

Injected syscalls: each ``ckpt`` command runs through bench/ckpt_counted.py,
which saves ckpt.control.inject's counter as the command ends; a row's notes
give that number ÷ processes and the calls that make most of it.

Everything is cleaned up on every exit path: each tree is killed whole (every
recorded pid that still runs bench/bin/tree, restored copies included; their
log file removed) by leaving its ``with`` block and at interpreter exit, and the
processes of the original tree die with their parent (PR_SET_PDEATHSIG), those
of a restored one within a second of their parent (tree.c says how).  Scratch
images live in a private directory under ``--disk-dir``, removed at the end.
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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.framework import Context, PrefaultedBuffer, Row, bench, fmt_size
from bench.workload import FILL_H, BenchChild, build_c

__all__ = ["Tree", "TreeRegion", "build_tree", "TREE_SRC", "TREE_BIN"]

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
TREE_SRC = BENCH_DIR / "tree.c"
TREE_BIN = BENCH_DIR / "bin" / "tree"

#: The shape: a root, CHILDREN children, GRANDCHILDREN under each (tree.c's defaults): 16 processes.
CHILDREN, GRANDCHILDREN = 3, 4
#: Memory per process of the tree the fixed cost is measured on.
SMALL_MIB = 1
#: The issue's target for the cost per process, excluding the memory copy.
TARGET_PER_PROCESS_MS = 5.0
#: Runs (at least) of the physical limits measured on the small tree, subtracted from its per-process rows.
LIMIT_RUNS = 5
#: A dump or restore of the tree takes a few seconds; this only stops a hung one.
CKPT_TIMEOUT = 600.0


def build_tree(cc: str = "gcc") -> Path:
    """Compile bench/tree.c if the binary is missing or older than its sources."""
    return build_c(TREE_SRC, TREE_BIN, cc=cc, deps=(FILL_H,))


# --------------------------------------------------------------------------- the target


@dataclass(frozen=True)
class TreeRegion:
    pid: int
    kind: str  # "heap" or "random"
    addr: int
    length: int


def _ours(pid: int) -> bool:
    """Whether ``pid`` still runs bench/bin/tree (a pid of a dead tree may have been reused by anyone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0] == os.fsencode(TREE_BIN)
    except OSError:
        return False


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[1])


class Tree(BenchChild):
    """A running bench/tree.c: ``1 + children + children × grandchildren`` processes of ``size_mib`` MiB each.

    Its stdout is a regular file (ckpt refuses a pipe to a process outside the
    tree), shared by every process of it and tailed here; a restore reopens it,
    so it stays until :meth:`stop`.  ``pids`` is the root first.  After a dump
    ended the tree, :meth:`dumped` reaps the root (our child); after a restore
    under the same pids, :meth:`restored` checks it and it is driven as before.
    """

    what = "process tree"

    def __init__(self, size_mib: int, children: int = CHILDREN, grandchildren: int = GRANDCHILDREN,
                 ready_timeout: float = 300.0, *, die_with_parent: bool = True) -> None:
        self.size_mib = size_mib
        self.die_with_parent = die_with_parent  # False: tree.c -k (the root survives us; stop() kills it)
        self.children = children
        self.grandchildren = grandchildren
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.regions: list[TreeRegion] = []
        #: Each process's parent as recorded at start (the root's is ours; not kept by a restore).
        self.parents: dict[int, int] = {}
        self._alive = False  # some process of the tree may run: stop() has work to do

    # -- lifetime -------------------------------------------------------

    def start(self) -> "Tree":
        binary = build_tree()
        argv = [str(binary), "-c", str(self.children), "-g", str(self.grandchildren), "-s", str(self.size_mib)]
        if not self.die_with_parent:
            argv.append("-k")
        self._spawn_logged(argv)
        self._alive = True
        try:
            deadline = time.monotonic() + self.ready_timeout
            while True:
                words = self._readline(deadline).split()
                if words[:1] == ["REGION"]:
                    self.regions.append(TreeRegion(int(words[1]), words[2], int(words[3], 16), int(words[4])))
                elif words[:1] == ["READY"]:
                    self.pids = [int(p) for p in words[1].removeprefix("pids=").split(",")]
                    break
                else:
                    raise RuntimeError(f"tree said {' '.join(words)!r}")
            want = 1 + self.children * (1 + self.grandchildren)
            has_data = set(self.pids) if self.size_mib else set()  # -s 0: nobody maps data of its own
            if len(self.pids) != want or {r.pid for r in self.regions} != has_data:
                raise RuntimeError(f"tree reported {len(self.pids)} processes and regions of "
                                   f"{len({r.pid for r in self.regions})}, want {want}")
            self.parents = {p: _ppid(p) for p in self.pids}
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every process of the tree that still runs, reap what is ours, remove the log (idempotent)."""
        if self._alive:
            for pid in self.pids:
                if _ours(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if self.proc is not None:
            super().stop()  # kills (already done) and reaps the root, our child
        deadline = time.monotonic() + 30
        while self._alive and any(_ours(p) for p in self.pids):  # the others are reaped by their parents or init
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.what}: processes {[p for p in self.pids if _ours(p)]} outlived SIGKILL")
            time.sleep(0.01)
        self._alive = False
        self._close_log()
        self._forgotten()

    def dumped(self) -> None:
        """A dump ended the tree: reap the root if it is our child; the log stays for the restore."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"the dumped root {self.proc.pid} did not end") from None
            self.proc = None  # still registered (BenchChild): stop() kills a restored copy at exit

    def wait_free(self, timeout: float = 30.0) -> float:
        """Wait until every pid of the dumped tree is free (its zombie reaped); seconds waited.

        The root is ours and reaped by :meth:`dumped`; the others are orphans that
        init reaps, which on this VM takes up to ~1 s.  A restore would otherwise
        spend that time in its own pid wait: not ckpt's cost, so the bench waits here.
        """
        t0 = time.monotonic()
        while any(os.path.exists(f"/proc/{p}") for p in self.pids):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"pids {[p for p in self.pids if os.path.exists(f'/proc/{p}')]} still taken "
                                   f"{timeout:.0f} s after the dump")
            time.sleep(0.001)
        return time.monotonic() - t0

    def restored(self, pids: Sequence[int]) -> None:
        """A restore brought the tree back: the same pids under the same parents, and each process's check passes."""
        if sorted(pids) != sorted(self.pids):
            raise RuntimeError(f"restore gave pids {sorted(pids)}, the tree had {sorted(self.pids)}")
        moved = {p: _ppid(p) for p in self.pids[1:] if _ppid(p) != self.parents[p]}
        if moved:
            raise RuntimeError(f"restored processes under other parents: {moved}")
        self.check()

    # -- commands -------------------------------------------------------

    @property
    def root(self) -> int:
        return self.pids[0]

    @property
    def total(self) -> int:
        return sum(r.length for r in self.regions)

    def regions_of(self, pid: int) -> list[TreeRegion]:
        return [r for r in self.regions if r.pid == pid]

    def _command(self, sig: int, kind: str, timeout: float = 60.0) -> list[list[str]]:
        """Send ``sig`` to the root (it forwards it down the tree); one ``kind`` line from every process."""
        os.kill(self.root, sig)
        deadline = time.monotonic() + timeout
        got: dict[int, list[str]] = {}
        while len(got) < len(self.pids):
            words = self._readline(deadline).split()
            if words[:1] != [kind]:
                raise RuntimeError(f"tree said {' '.join(words)!r} (waiting for {kind})")
            got[int(words[1])] = words
        if set(got) != set(self.pids):
            raise RuntimeError(f"{kind} from {sorted(got)}, the tree is {sorted(self.pids)}")
        return list(got.values())

    def dirty(self) -> int:
        """Every process rewrites 1 % of its pages (spread); pages written in all."""
        return sum(int(w[3]) for w in self._command(signal.SIGUSR1, "DIRTY"))

    def check(self) -> None:
        """Every process checks its pid, ppid and memory checksum; RuntimeError naming the ones that fail."""
        bad = [" ".join(w) for w in self._command(signal.SIGUSR2, "CHECK") if w[3] != "OK"]
        if bad:
            raise RuntimeError("; ".join(bad))

    def _gone(self) -> str | None:
        if self.proc is None and self.pids and not _ours(self.root):
            return f"tree root {self.root} is gone"  # a restored copy: not our child
        return super()._gone()


# --------------------------------------------------------------------------- ckpt runs


@dataclass(frozen=True)
class CkptRun:
    """One ``ckpt`` command: wall time of the process, its ``--json-stats``, the syscalls it injected."""

    wall: float
    stats: dict[str, Any]
    injected: int
    by_syscall: dict[str, int] = field(default_factory=dict)


def _ckpt(scratch: Path, *args: str) -> CkptRun:
    """Run ``ckpt ARGS --json-stats`` as its own process (through bench/ckpt_counted.py) to completion."""
    stats_path, counts_path = scratch / "stats.json", scratch / "counts.json"
    argv = [sys.executable, "-m", "bench.ckpt_counted", str(counts_path), *args, "--json-stats", str(stats_path)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=REPO)
    try:
        _, err = proc.communicate(timeout=CKPT_TIMEOUT)
    except BaseException:  # a timeout, Ctrl-C: nothing may act on the tree any more
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ckpt {' '.join(args)} failed ({proc.returncode}): {err.decode().strip()}")
    stats = json.loads(stats_path.read_text())
    counts = json.loads(counts_path.read_text())
    stats_path.unlink()
    counts_path.unlink()
    return CkptRun(wall, stats, counts["total"], counts["by_syscall"])


def _image_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def _top_calls(by_syscall: dict[str, int], processes: int, n: int = 4) -> str:
    """"mmap 12, close 9, …" per process: what the injected syscalls are."""
    top = Counter(by_syscall).most_common(n)
    return ", ".join(f"{name} {count / processes:.1f}" for name, count in top)


def _injected_note(total: int, by_syscall: dict[str, int], processes: int) -> str:
    return (f"{total / processes:.1f} injected syscalls per process"
            + (f" ({_top_calls(by_syscall, processes)})" if by_syscall else ""))


@dataclass
class Chain:
    """``runs`` × (dump that ends the tree, restore, check) of one tree: every command's run."""

    dumps: list[CkptRun] = field(default_factory=list)
    restores: list[CkptRun] = field(default_factory=list)
    #: Seconds the bench waited, untimed, for the dumped processes' pids to be free before each restore.
    reap_waits: list[float] = field(default_factory=list)
    image_bytes: int = 0


def _dump_restore_chain(tree: Tree, scratch: Path, runs: int) -> Chain:
    """Dump the tree (ending it) and restore it, ``runs`` times: the restored tree is dumped again."""
    chain = Chain()
    for i in range(runs):
        image = scratch / f"image-{i}"
        try:
            chain.dumps.append(_ckpt(scratch, "dump", "-t", str(tree.root), "-D", str(image)))
            tree.dumped()
            chain.image_bytes = _image_bytes(image)
            chain.reap_waits.append(tree.wait_free())
            chain.restores.append(_ckpt(scratch, "restore", "-D", str(image), "-d"))
            tree.restored(chain.restores[-1].stats["pids"])
        finally:
            shutil.rmtree(image, ignore_errors=True)
    return chain


def _fixed(run: CkptRun) -> float:
    """A command's in-process seconds less a restore's wait for its pids (someone else's zombies, not ckpt's work)."""
    return run.stats["total_seconds"] - run.stats.get("pid_wait_seconds", 0.0)


def _median_run(runs: list[CkptRun], key: str = "total_seconds") -> CkptRun:
    """The run whose in-process time is the median (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.stats[key])[(len(runs) - 1) // 2]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"


def _label(tree: Tree) -> str:
    return f"tree {len(tree.pids)} × {fmt_size(tree.total // len(tree.pids))}"


# --------------------------------------------------------------------------- limits and pre-dumps


@dataclass(frozen=True)
class Limits:
    """What the hardware does with a tree's bytes, each summed over its processes: one value per run (seconds)."""

    read: tuple[float, ...]      # process_vm_readv into a pre-faulted buffer
    zstd: tuple[float, ...]      # zstd -1, one thread, frames of ``frame`` bytes
    unzstd: tuple[float, ...]    # decompressing them into a pre-faulted frame
    write: tuple[float, ...]     # writing the bytes to a file (page cache)
    compressed: int              # bytes of the frames
    per: int                     # biggest process's bytes (the buffer read into)
    frame: int


def _measure_limits(ctx: Context, tree: Tree, runs: int | None = None) -> Limits:
    """Read, compress, decompress and write the tree's bytes as ckpt does: per process, in frames."""
    import zstandard

    from bench.limits import _decompress_into, _open_tmpfile
    from ckpt.kernel import vm

    per = max(sum(r.length for r in tree.regions_of(p)) for p in tree.pids)
    frame = ctx.frame_size
    buf, out = PrefaultedBuffer(per), PrefaultedBuffer(frame)
    out_view = out.view()
    cctx, dctx = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
    t_read, t_zstd, t_unzstd, t_write = [], [], [], []
    compressed = 0
    try:
        for _ in range(runs or ctx.runs):
            read = zstd = unzstd = write = 0.0
            compressed = 0
            fd = _open_tmpfile(ctx.tmpdir)
            try:
                for pid in tree.pids:
                    remote = [(r.addr, r.length) for r in tree.regions_of(pid)]
                    local, n = [], 0
                    for _, length in remote:
                        local.append((buf.address + n, length))
                        n += length
                    t0 = time.perf_counter()
                    got = vm.process_vm_readv(pid, local, remote)
                    read += time.perf_counter() - t0
                    if got != n:
                        raise RuntimeError(f"process_vm_readv of {pid} read {got} of {n} bytes")
                    data = buf.view(0, n)
                    try:
                        for o in range(0, n, frame):
                            t0 = time.perf_counter()
                            blob = cctx.compress(data[o:o + frame])
                            t1 = time.perf_counter()
                            _decompress_into(dctx, blob, out_view, min(frame, n - o))
                            t2 = time.perf_counter()
                            zstd += t1 - t0
                            unzstd += t2 - t1
                            compressed += len(blob)
                        t0 = time.perf_counter()
                        done = 0
                        while done < n:
                            done += os.write(fd, data[done:])
                        write += time.perf_counter() - t0
                    finally:
                        data.release()
            finally:
                os.close(fd)
            t_read.append(read)
            t_zstd.append(zstd)
            t_unzstd.append(unzstd)
            t_write.append(write)
    finally:
        out_view.release()
        out.close()
        buf.close()
    return Limits(tuple(t_read), tuple(t_zstd), tuple(t_unzstd), tuple(t_write), compressed, per, frame)


def _limits(ctx: Context, tree: Tree) -> Iterator[Row]:
    """What the hardware does with the tree's bytes: read, compress, decompress, write (each summed over processes)."""
    lim = _measure_limits(ctx, tree)
    n, label, per, frame = tree.total, _label(tree), lim.per, lim.frame
    yield Row("tree.limit.pvr", f"{label}: process_vm_readv → pre-faulted buffer", n, lim.read,
              notes=f"one call per process into one {fmt_size(per)} buffer")
    yield Row("tree.limit.zstd1", f"{label}: zstd -1, 1 thread", n, lim.zstd, ratio=n / lim.compressed,
              notes=f"{fmt_size(frame)} frames")
    yield Row("tree.limit.unzstd1", f"{label}: zstd -d → pre-faulted buffer", n, lim.unzstd,
              notes=f"{fmt_size(frame)} frames; rate counts decompressed bytes")
    yield Row("tree.limit.write", f"{label}: write to a file (page cache)", n, lim.write,
              notes=f"one write per process, {ctx.tmpdir}")


@bench("tree", order=300, workload=False)
def tree_limits_and_pre_dumps(ctx: Context) -> Iterator[Row]:
    """The limits for the tree's bytes, then its first pre-dump and 1 % deltas (in this process, via the API)."""
    from ckpt import api

    scratch = Path(tempfile.mkdtemp(prefix="bench-tree-", dir=ctx.tmpdir))
    try:
        with Tree(ctx.tree_mib) as tree:
            yield from _limits(ctx, tree)
            try:
                yield from _pre_dumps(ctx, tree, scratch)
            finally:
                for pid in tree.pids:  # leave nothing parked in processes about to be killed, whatever happened
                    try:
                        api.track_stop(pid)
                    except Exception:  # noqa: BLE001 - best effort: the tree dies next
                        pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pre_dumps(ctx: Context, tree: Tree, scratch: Path) -> Iterator[Row]:
    """The tree's first pre-dump, then ``ctx.runs`` rounds of 1 % written + a delta pre-dump."""
    from ckpt import api
    from ckpt.control.inject import injected_by_syscall, injected_syscalls

    n, label = len(tree.pids), _label(tree)
    before, by_before = injected_syscalls(), injected_by_syscall()
    first = api.pre_dump(tree.root, scratch / "0")
    by_syscall = dict(Counter(injected_by_syscall()) - Counter(by_before))
    calls = _injected_note(injected_syscalls() - before, by_syscall, n)
    yield Row("tree.predump.full", f"ckpt pre-dump, {label}, first (all pages, starts tracking)", tree.total,
              (first.total_seconds,), baseline="tree.limit.zstd1",
              notes=f"{first.processes} processes, {first.pages_stored} pages, image "
                    f"{_image_bytes(scratch / '0') / 2**20:.0f} MiB; tracker start "
                    f"{_ms(first.collect_seconds)}, frozen {_ms(first.frozen_seconds)} in all "
                    f"({_ms(first.frozen_seconds / n)} per process); {calls}",
              error=None if first.processes == n else f"pre-dump saw {first.processes} of {n} processes")
    parent, times, last, written, injected = scratch / "0", [], None, 0, []
    for i in range(1, ctx.runs + 1):
        written = tree.dirty()
        before = injected_syscalls()
        last = api.pre_dump(tree.root, scratch / str(i), prev_images_dir=parent)
        injected.append(injected_syscalls() - before)
        times.append(last.total_seconds)
        parent = scratch / str(i)
    assert last is not None
    yield Row("tree.predump.delta_1pct", f"ckpt pre-dump, {label}, 1 % of pages written", tree.total,
              tuple(times),
              notes=f"{written} pages written (each process its own), {last.pages_stored} copied, "
                    f"{last.pages_parent} in parent; get+clear {_ms(last.collect_seconds)}, copy "
                    f"{_ms(last.copy_seconds)}, image {_image_bytes(parent) / 2**20:.1f} MiB, frozen "
                    f"{_ms(last.frozen_seconds)}; {statistics.median(injected) / n:.1f} injected syscalls "
                    f"per process",
              error=None if last.pages_stored >= written and not last.full else
              ("full copy" if last.full else "copied fewer pages than written"))


# --------------------------------------------------------------------------- dump and restore


@bench("tree", order=310, workload=False)
def tree_dump_restore(ctx: Context) -> Iterator[Row]:
    """``ckpt dump`` (ending it) and ``ckpt restore`` of the 16 × 64 MiB tree, as a user runs them."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-tree-", dir=ctx.tmpdir))
    try:
        with Tree(ctx.tree_mib) as tree:
            n, label, total = len(tree.pids), _label(tree), tree.total
            chain = _dump_restore_chain(tree, scratch, ctx.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    dumps, restores, size = chain.dumps, chain.restores, chain.image_bytes
    d, r = _median_run(dumps), _median_run(restores)
    ds, rs = d.stats, r.stats
    fixed = (ds["total_seconds"] - ds["memory_read_seconds"]) / n
    yield Row("tree.dump", f"ckpt dump, {label} (ends it)", total, tuple(x.wall for x in dumps),
              baseline="tree.limit.zstd1",
              notes=f"frozen {_ms(ds['frozen_seconds'])}, in-process {_ms(ds['total_seconds'])} (memory "
                    f"{_ms(ds['memory_read_seconds'])}, write {_ms(ds['write_seconds'])}), (total − memory) / {n} "
                    f"= {_ms(fixed)} per process; {ds['processes']} processes, image {size / 2**20:.0f} MiB, peak "
                    f"RSS {ds['peak_rss_bytes'] / 2**20:.0f} MiB; {_injected_note(d.injected, d.by_syscall, n)}")
    fixed = (_fixed(r) - rs["memory_seconds"]) / n
    yield Row("tree.restore", f"ckpt restore, {label}", total, tuple(x.wall for x in restores),
              baseline="tree.limit.unzstd1",
              notes=f"in-process {_ms(rs['total_seconds'])} (memory {_ms(rs['memory_seconds'])}, pid wait "
                    f"{_ms(rs['pid_wait_seconds'])}), (total − pid wait − memory) / {n} = {_ms(fixed)} per "
                    f"process; every pid back under its parent, every process's memory checksum right; peak RSS "
                    f"{rs['peak_rss_bytes'] / 2**20:.0f} MiB; {_injected_note(r.injected, r.by_syscall, n)}; "
                    f"before it the bench waited {_ms(statistics.median(chain.reap_waits))} (untimed) for init to "
                    f"reap the dumped processes")


# --------------------------------------------------------------------------- the fixed cost per process


@bench("tree", order=320, workload=False)
def tree_cost_per_process(ctx: Context) -> Iterator[Row]:
    """Dump and restore of 16 processes with no data, of 16 × 1 MiB and of one of 1 MiB: what a process costs."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-tree-", dir=ctx.tmpdir))
    try:
        with Tree(0) as bare_tree:
            bare = _dump_restore_chain(bare_tree, scratch, ctx.runs)
        with Tree(SMALL_MIB, children=0, grandchildren=0) as one:
            single = _dump_restore_chain(one, scratch, ctx.runs)
        with Tree(SMALL_MIB) as tree:
            n, label, total = len(tree.pids), _label(tree), tree.total
            # The physical copy of these very bytes, subtracted below (cheap: a few runs steady it).
            lim = _measure_limits(ctx, tree, runs=max(ctx.runs, LIMIT_RUNS))
            many = _dump_restore_chain(tree, scratch, ctx.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def fixed(runs: list[CkptRun]) -> float:
        return statistics.median(_fixed(x) for x in runs)

    memory_key = {"dump": "memory_read_seconds", "restore": "memory_seconds"}
    bytes_key = {"dump": "bytes_read", "restore": "bytes_written"}
    # What moving the 1 MiB tree's bytes costs at best: a dump reads them (process_vm_readv), a
    # restore decompresses them (zstd -d into a pre-faulted buffer).
    copies = {"dump": (statistics.median(lim.read), "process_vm_readv"),
              "restore": (statistics.median(lim.unzstd), "zstd -d")}
    for op, runs, one_runs, bare_runs in (("dump", many.dumps, single.dumps, bare.dumps),
                                          ("restore", many.restores, single.restores, bare.restores)):
        mid = _median_run(runs)
        startup = statistics.median(x.wall - x.stats["total_seconds"] for x in runs)
        s = mid.stats
        parts = (f", frozen {_ms(s['frozen_seconds'])} (memory {_ms(s['memory_read_seconds'])}, write "
                 f"{_ms(s['write_seconds'])})" if op == "dump" else
                 f" (memory {_ms(s['memory_seconds'])}, pid wait {_ms(s['pid_wait_seconds'])})")
        yield Row(f"tree.small.{op}", f"ckpt {op}, {label}", total, tuple(x.wall for x in runs),
                  notes=f"in-process {_ms(s['total_seconds'])}{parts}; 1 process of "
                        f"{fmt_size(SMALL_MIB << 20)}: {_ms(fixed(one_runs))}; interpreter start and imports "
                        f"{_ms(startup)}; {_injected_note(mid.injected, mid.by_syscall, n)}")
        bmid = _median_run(bare_runs)
        bs = bmid.stats
        bare_bytes = int(bs.get(bytes_key[op], 0))
        yield Row(f"tree.bare.{op}", f"ckpt {op}, tree {n} × no data", bare_bytes, tuple(x.wall for x in bare_runs),
                  notes=f"in-process {_ms(bs['total_seconds'])}"
                        + (f", frozen {_ms(bs['frozen_seconds'])}" if op == "dump" else
                           f" (pid wait {_ms(bs['pid_wait_seconds'])})")
                        + f"; {fmt_size(bare_bytes // n)} of pages a process (libc, stack, heap); "
                          f"{_injected_note(bmid.injected, bmid.by_syscall, n)}")
        per = tuple(_fixed(x) / n for x in bare_runs)
        copy, how = copies[op]
        minus_copy = statistics.median((_fixed(x) - copy) / n for x in runs)
        memory = mid.stats[memory_key[op]]
        no_memory = (_fixed(mid) - memory) / n
        marginal = (fixed(runs) - fixed(one_runs)) / (n - 1)
        calls = (statistics.median(x.injected for x in runs)
                 - statistics.median(x.injected for x in one_runs)) / (n - 1)
        met = statistics.median(per) * 1e3 <= TARGET_PER_PROCESS_MS
        met_copy = minus_copy * 1e3 <= TARGET_PER_PROCESS_MS
        extra = (f", its zstd -1 ({_ms(statistics.median(lim.zstd))} on one thread) not subtracted"
                 if op == "dump" else "")
        yield Row(f"tree.per_process.{op}", f"ckpt {op}, tree: cost per process (excluding memory copy)",
                  bare_bytes // n, per,
                  notes=f"in-process time of the {n}-process tree with no data of its own"
                        f"{' less pid wait' if op == 'restore' else ''} ÷ {n}, nothing subtracted (its "
                        f"{fmt_size(bare_bytes // n)} a process copied and counted): target ≤ "
                        f"{TARGET_PER_PROCESS_MS:.0f} ms {'met' if met else 'MISSED'}.  The {label}: "
                        f"{_ms(fixed(runs) / n)} per process with its copy; less the physical copy ({how} of its "
                        f"{fmt_size(total)} in this run, {_ms(copy)}{extra}) {_ms(minus_copy)} "
                        f"({'met' if met_copy else 'missed'}); less its whole memory phase "
                        f"({_ms(memory / n)} a process) {_ms(no_memory)}; marginal (vs a 1-process tree, "
                        f"copy included) {_ms(marginal)} and {calls:.0f} injected syscalls per process")
