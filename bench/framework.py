"""The small framework behind ``make bench``: rows, a registry of bench functions, the report.

A *bench function* takes a :class:`Context` and yields :class:`Row` objects.
It is registered with :func:`bench`; ``bench/run.py`` imports the modules
that hold them (``BENCH_MODULES``) and runs them in ``order``.  The first
group, ``limits`` (bench/limits.py), measures the physical limits of this
machine in the same run; a later row names one of them as its ``baseline``
and the report prints the ratio — "ckpt dump = 0.80× process_vm_readv" —
computed here, in :func:`versus`, and nowhere else.

Adding rows for a new feature::

    # bench/dump.py
    from bench.framework import Context, Row, bench

    @bench("dump", order=100)
    def full_dump(ctx: Context):
        wl = ctx.workload                 # the shared, already running target
        times = ctx.repeat(lambda: do_the_dump(wl.pid))
        yield Row("dump.full", "ckpt dump (full)", wl.total, times, baseline="limit.pvr")

and append ``"bench.dump"`` to ``BENCH_MODULES`` in bench/run.py.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import math
import mmap
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "Row", "Bench", "Context", "PrefaultedBuffer", "bench", "registry", "versus",
    "markdown_table", "machine_info", "write_json", "fmt_size",
]

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One measured line of the report.

    ``nbytes`` is the amount of *input* the operation handled (bytes of
    process memory, not of compressed output), so rates of different rows
    compare.  ``times`` holds every run; the report shows the median.
    """

    key: str
    what: str
    nbytes: int
    times: tuple[float, ...]
    #: Compression ratio (input / output), when the row compresses.
    ratio: float | None = None
    #: Key of the (limit) row whose rate this one is compared with.
    baseline: str | None = None
    notes: str = ""
    group: str = ""
    error: str | None = None

    @property
    def seconds(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def rate(self) -> float:
        """Bytes per second of input (median run)."""
        s = self.seconds
        return self.nbytes / s if s > 0 and not math.isnan(s) else math.nan


def versus(row: Row, by_key: dict[str, Row]) -> str:
    """"0.80× process_vm_readv": this row's rate against its baseline's, or ""."""
    if not row.baseline or row.error:
        return ""
    base = by_key.get(row.baseline)
    if base is None or base.error or math.isnan(base.rate) or math.isnan(row.rate):
        return f"(no {row.baseline})"
    return f"{row.rate / base.rate:.2f}× {base.what}"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Bench:
    group: str
    order: int
    fn: Callable[["Context"], Iterable[Row]]
    #: Whether it uses the shared workload (``ctx.workload``/``ctx.buffer``): run.py starts that
    #: 1 GiB process only when a selected bench does (``--only tree`` brings its own targets).
    workload: bool = True

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__name__}"


_REGISTRY: list[Bench] = []


BenchFn = Callable[["Context"], Iterable[Row]]


def bench(group: str, *, order: int, workload: bool = True) -> Callable[[BenchFn], BenchFn]:
    """Register a bench function; ``order`` sorts the report (limits use 0–99).

    ``workload=False``: it starts its own targets and leaves ``ctx.workload``/``ctx.buffer`` alone.
    """

    def deco(fn: BenchFn) -> BenchFn:
        _REGISTRY.append(Bench(group, order, fn, workload))
        return fn

    return deco


def registry() -> list[Bench]:
    return sorted(_REGISTRY, key=lambda b: (b.order, b.name))


# --------------------------------------------------------------------------- memory

_MADV_POPULATE_WRITE = 23  # Linux 5.14; not exported by Python's mmap module


class PrefaultedBuffer:
    """An anonymous mapping whose pages are all faulted in before use.

    DESIGN §3/§5: the first touch of fresh anonymous memory runs at ~2 GB/s
    here, five times slower than process_vm_readv into memory that is already
    faulted; a limit measured into a fresh buffer would measure page faults.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.map = mmap.mmap(-1, max(size, mmap.PAGESIZE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        prefault(self.map)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        end = self.size if length is None else offset + length
        return memoryview(self.map)[offset:end]

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            # A view is still alive (e.g. held by a traceback after a failed
            # bench); the mapping goes away with the process instead.
            pass


def prefault(m: mmap.mmap) -> None:
    """Fault in every page of ``m`` for writing (MADV_POPULATE_WRITE, else memset)."""
    try:
        m.madvise(_MADV_POPULATE_WRITE)
    except OSError:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        ctypes.memset(addr, 0, len(m))


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What every bench function gets: options, the shared workload, reusable memory."""

    size: int
    runs: int
    quick: bool
    frame_size: int
    workload: Any  # bench.workload.Workload, started by run.py
    buffer: PrefaultedBuffer
    tmpdir: Path
    rows: list[Row] = field(default_factory=list)
    #: Memory of each process of the tree benchmark's 16-process tree (bench/tree.py), MiB.
    tree_mib: int = 64
    #: Whether the shared buffer holds a copy of the workload's memory.
    loaded: bool = False
    #: The groups (or GROUP.FUNCTION) named by ``--only``; empty: all of them.
    only: frozenset[str] = frozenset()

    def repeat(self, fn: Callable[[], object], runs: int | None = None) -> tuple[float, ...]:
        """Wall-clock seconds of ``runs`` calls of ``fn``."""
        out = []
        for _ in range(runs or self.runs):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return tuple(out)

    def load_workload(self) -> memoryview:
        """The workload's memory, copied once into the shared buffer (regions back to back)."""
        if not self.loaded:
            from ckpt.kernel import vm

            remote = [(r.addr, r.length) for r in self.workload.regions]
            local, off = [], 0
            for _, n in remote:
                local.append((self.buffer.address + off, n))
                off += n
            got = vm.process_vm_readv(self.workload.pid, local, remote)
            if got != off:
                raise RuntimeError(f"process_vm_readv read {got} of {off} bytes")
            self.loaded = True
        return self.buffer.view(0, self.workload.total)

    def region_view(self, kind: str) -> memoryview:
        """The part of the loaded buffer that holds one workload region."""
        view = self.load_workload()
        off = 0
        for r in self.workload.regions:
            if r.kind == kind:
                return view[off:off + r.length]
            off += r.length
        raise KeyError(kind)


# --------------------------------------------------------------------------- report


def fmt_size(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            v = n / div
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def _fmt_time(s: float) -> str:
    if math.isnan(s):
        return "—"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_rate(r: float) -> str:
    return "—" if math.isnan(r) else f"{r / 1e9:.2f} GB/s"


def markdown_table(rows: list[Row]) -> str:
    """The report: one line per row, rates in decimal GB/s as in DESIGN.md."""
    by_key = {r.key: r for r in rows}
    lines = [
        "| what | size | time | rate | ratio | vs limit | notes |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.what} | {fmt_size(r.nbytes)} | — | — | — | | FAILED: {r.error} |")
            continue
        ratio = "" if r.ratio is None else (f"{r.ratio:.0f}×" if r.ratio >= 100 else f"{r.ratio:.2f}×")
        spread = ""
        if len(r.times) > 1:
            spread = f"best {_fmt_time(min(r.times))} of {len(r.times)}"
        notes = "; ".join(x for x in (r.notes, spread) if x)
        lines.append(f"| {r.what} | {fmt_size(r.nbytes)} | {_fmt_time(r.seconds)} | {_fmt_rate(r.rate)} "
                     f"| {ratio} | {versus(r, by_key)} | {notes} |")
    return "\n".join(lines)


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine_info(disk_dir: Path) -> dict[str, Any]:
    """Where the numbers were taken: kernel, CPU, memory, THP mode, versions, commit."""
    try:
        import zstandard
        zstd_version = f"{zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION})"
    except Exception:  # reported, not fatal
        zstd_version = "unavailable"
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = ""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    u = os.uname()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kernel": f"{u.sysname} {u.release} {u.version}",
        "machine": u.machine,
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "mem_total": _first_line("/proc/meminfo", "MemTotal"),
        "thp": thp,
        "python": platform.python_version(),
        "zstandard": zstd_version,
        "disk_dir": str(disk_dir),
        "commit": commit,
    }


def write_json(path: Path, rows: list[Row], machine: dict[str, Any], config: dict[str, Any]) -> None:
    """Write the report as JSON (atomically: a half-written results file is worse than none)."""
    by_key = {r.key: r for r in rows}

    def finite(x: float) -> float | None:  # JSON has no NaN
        return None if math.isnan(x) else x

    out = {
        "machine": machine,
        "config": config,
        "rows": [
            {**asdict(r), "times": list(r.times), "seconds": finite(r.seconds),
             "rate_bytes_per_s": finite(r.rate), "versus": versus(r, by_key)}
            for r in rows
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def run_all(ctx: Context, benches: Iterable[Bench]) -> Iterator[Row]:
    """Run each bench; one that fails yields an error row and the others still run."""
    for b in benches:
        try:
            for row in b.fn(ctx):
                row = row if row.group else _with_group(row, b.group)
                ctx.rows.append(row)
                yield row
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a broken bench must not hide the others' numbers
            row = Row(f"{b.group}.{b.fn.__name__}", b.name, 0, (), group=b.group, error=f"{type(exc).__name__}: {exc}")
            ctx.rows.append(row)
            yield row


def _with_group(row: Row, group: str) -> Row:
    return replace(row, group=group)
