"""``make bench``: start a workload, measure, print a markdown table, write JSON.

    .venv/bin/python bench/run.py [--size-mib 1024] [--json bench/results.json] [--quick]
    .venv/bin/python bench/run.py --only tree [--tree-mib 64]     # one group (here: the process tree)
    .venv/bin/python bench/run.py --only criu --runs 3            # ckpt beside CRIU 4.2 (bench/criu.py)

The first rows are the physical limits of this machine measured in the same
run (bench/limits.py); rows added by later issues compare against them.  The
workload (bench/workload.c) is killed and reaped on every exit path: normal
end, an exception, Ctrl-C, SIGTERM or SIGHUP (turned into KeyboardInterrupt
here), and — through PR_SET_PDEATHSIG on its side — SIGKILL of this process.
Peak memory of the bench itself: one pre-faulted buffer of the workload's
size, plus at most ~256 MiB of scratch at a time.  The workload and that
buffer are set up only when a selected group uses them (``--only tree`` does
not: bench/tree.py starts its own process trees).
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import mmap
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make `bench` and `ckpt` importable
    sys.path.insert(0, str(REPO))

from bench.framework import (  # noqa: E402
    Context, PrefaultedBuffer, fmt_size, machine_info, markdown_table, registry, run_all, write_json,
)
from bench.workload import Workload, build_workload  # noqa: E402

#: Modules holding @bench functions; later issues append theirs (dump, restore, pre-dump, migration).
BENCH_MODULES = ("bench.limits", "bench.track", "bench.incremental", "bench.dump", "bench.tree", "bench.cow", "bench.migrate",
                 "bench.criu", "bench.kernels")

QUICK_SIZE_MIB = 64
#: Memory of each of the tree benchmark's 16 processes (bench/tree.py): the issue's 64 MiB, 4 with --quick.
TREE_MIB, QUICK_TREE_MIB = 64, 4


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=None, help="workload size (default 1024; 64 with --quick)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results.json", help="where to write the JSON")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE_MIB} MiB, one run per row")
    ap.add_argument("--runs", type=int, default=None, help="repetitions per row (default 3; 1 with --quick)")
    ap.add_argument("--frame-mib", type=int, default=4, help="zstd frame size (ckpt writes bounded frames)")
    ap.add_argument("--disk-dir", type=Path, default=REPO, help="directory for the disk-write test")
    ap.add_argument("--only", default="", help="comma-separated groups (or GROUP.FUNCTION) to run (default: all), e.g. tree")
    ap.add_argument("--tree-mib", type=int, default=None,
                    help=f"MiB per process of the 16-process tree (default {TREE_MIB}; {QUICK_TREE_MIB} with --quick)")
    args = ap.parse_args(argv)
    if args.size_mib is None:
        args.size_mib = QUICK_SIZE_MIB if args.quick else 1024
    if args.tree_mib is None:
        args.tree_mib = QUICK_TREE_MIB if args.quick else TREE_MIB
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.size_mib <= 0 or args.runs <= 0 or args.frame_mib <= 0 or args.tree_mib <= 0:
        ap.error("sizes and runs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    for mod in BENCH_MODULES:
        importlib.import_module(mod)
    groups = {g for g in args.only.split(",") if g}
    # A group ("track") or one bench of it ("track.soft_dirty": group and function name).
    names = {b.group for b in registry()} | {f"{b.group}.{b.fn.__name__}" for b in registry()}
    benches = [b for b in registry() if not groups or b.group in groups or f"{b.group}.{b.fn.__name__}" in groups]
    if groups - names:
        print(f"bench: no group {', '.join(sorted(groups - names))} "
              f"(groups: {', '.join(sorted({b.group for b in registry()}))})", file=sys.stderr)
        return 2
    need_workload = any(b.workload for b in benches)

    if need_workload:
        build_workload()
    # The CLI rows start `ckpt` processes: measure them with the package byte-compiled, as
    # `make install` leaves it (PYTHONDONTWRITEBYTECODE would have every run compile it again).
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "ckpt"), quiet=1)
    t0 = time.monotonic()
    buffer: PrefaultedBuffer | None = None
    try:
        # Without the workload (--only tree): a one-page buffer, so Context keeps its types.
        buffer = PrefaultedBuffer(args.size_mib << 20 if need_workload else mmap.PAGESIZE)
        with Workload(args.size_mib) if need_workload else nullcontext(None) as wl:
            if wl is not None:
                print(f"# ckpt bench: workload pid {wl.pid}, {args.size_mib} MiB "
                      f"({', '.join(f'{r.kind} {fmt_size(r.length)}' for r in wl.regions)}), "
                      f"{args.runs} run(s) per row", file=sys.stderr, flush=True)
            else:
                print(f"# ckpt bench: no shared workload (not used by {', '.join(sorted(groups))}), "
                      f"{args.runs} run(s) per row", file=sys.stderr, flush=True)
            ctx = Context(size=args.size_mib << 20, runs=args.runs, quick=args.quick,
                          frame_size=args.frame_mib << 20, workload=wl, buffer=buffer, tmpdir=args.disk_dir,
                          tree_mib=args.tree_mib, only=frozenset(groups))
            for row in run_all(ctx, benches):
                status = f"FAILED {row.error}" if row.error else f"{row.rate / 1e9:.2f} GB/s"
                print(f"#   {row.what}: {status}", file=sys.stderr, flush=True)
            rows = ctx.rows
    except KeyboardInterrupt:
        print("bench: interrupted; workload killed", file=sys.stderr)
        return 130
    finally:
        if buffer is not None:
            buffer.close()

    machine = machine_info(args.disk_dir)
    config = {"size_mib": args.size_mib, "quick": args.quick, "runs": args.runs, "frame_mib": args.frame_mib,
              "workload": "heap-like 60% / zero pages (touched) 25% / random 15%" if need_workload else None,
              "tree_mib": args.tree_mib, "only": sorted(groups),
              "elapsed_s": round(time.monotonic() - t0, 2)}
    print(f"\nckpt bench — {machine['date']} — {machine['kernel'].split(' #')[0]}, {machine['cpu_model']}, "
          f"{machine['cores']} cores, THP {machine['thp']}\n")
    print(markdown_table(rows))
    write_json(args.json, rows, machine, config)
    print(f"\nJSON: {args.json}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
