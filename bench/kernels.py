"""Another kernel: dirty tracking and migration downtime in a Debian 13 (6.12) QEMU guest.

This host's kernel has no soft-dirty, so the soft-dirty back-end and the
pagemap-read fallback (no PAGEMAP_SCAN) are measured in a guest booted by
tests/kernels/guest.py (TCG: it runs 20-30x slower than the host, so its rows
compare with each other, not with the host's).  The guest runs this very
bench, ``bench/run.py --only track.uffd_wp,track.soft_dirty`` over a workload
of the same size, twice: as the kernel is (uffd-wp and soft-dirty, both read
through PAGEMAP_SCAN), then with ``CKPT_DISABLE=pagemap_scan`` (soft-dirty
bits and page presence from batched /proc/PID/pagemap reads, as on 6.1; no
uffd-wp, which needs PAGEMAP_SCAN).  Its rows come back here with a
``guest.`` key.

Then a ``ckpt migrate`` of the multi-threaded C target (tests/scenarios/
vdso_clock.c: its threads call the vDSO) from this host into the guest and
back (tests/kernels/across.py, the cases of ``make test-kernels``): the rows'
time is the downtime, over the loopback forward at ~10-20 MB/s.

No targets: the issue asks for these numbers reported, not bounded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from bench.framework import REPO, Context, Row, bench

KERNEL = "6.12"
#: Guest RAM: the bench's prefaulted buffer and workload (1 GiB each by default) and the guest's own.
GUEST_MEMORY = "4G"
#: A guard only (TCG): one guest bench run, one migration.
GUEST_RUN_TIMEOUT = 3600.0
#: (CKPT_DISABLE, key prefix, what, the guest's --only): without PAGEMAP_SCAN there is no uffd-wp tracking.
_RUNS = (("", "", "", "track.uffd_wp,track.soft_dirty"),
         ("pagemap_scan", "pagemap.", " (no PAGEMAP_SCAN: pagemap reads)", "track.soft_dirty"))


def _guest_modules() -> None:
    for d in (REPO / "tests", REPO / "tests" / "kernels"):
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))


@bench("kernels", order=900, workload=False)
def guest_612(ctx: Context) -> Iterator[Row]:
    if ctx.quick:
        print("#   kernels: skipped by --quick (it boots a QEMU guest: minutes)", file=sys.stderr, flush=True)
        return
    _guest_modules()
    import across
    from guest import XFER_MOUNT, Guest

    from bench.workload import build_workload

    build_workload()  # here, where gcc is quick; the guest sees the tree
    size_mib = ctx.size >> 20
    host_port = across.free_port()
    with Guest(KERNEL, cache="loose", fwd={0: across.GUEST_PORT}, guestfwd=[host_port], memory=GUEST_MEMORY) as g:
        where = f"{KERNEL} guest ({g.uname}, TCG)"
        for disable, key, how, only in _RUNS:
            name = f"track{'-' + disable if disable else ''}.json"
            r = g.run([sys.executable, "bench/run.py", "--only", only,
                       "--size-mib", str(size_mib), "--runs", str(ctx.runs), "--json", f"{XFER_MOUNT}/{name}"],
                      cwd=REPO, env={"CKPT_DISABLE": disable} if disable else None, timeout=GUEST_RUN_TIMEOUT)
            out = g.xfer / name
            if not out.exists():
                raise RuntimeError(f"the guest's bench wrote no results (exit {r.rc}): {r.stderr.strip()[-300:]}")
            for row in json.loads(out.read_text())["rows"]:
                yield Row(f"guest.{key}{row['key']}", f"{where}: {row['what']}{how}", row["nbytes"],
                          tuple(row["times"]), notes=row["notes"], error=row["error"])
        ac = across.Across(g, host_port)
        try:
            for direction, move in (("to", ac.migrate_to_guest), ("from", ac.migrate_from_guest)):
                s = move("c")
                notes = (f"{s.get('iterations')} pre-copy rounds, {(s.get('bytes_sent') or 0) / 1e6:.1f} MB sent, "
                         f"total {s.get('total_ms')} ms, restore {s.get('restore_ms')} ms, "
                         f"predicted downtime {s.get('predicted_downtime_ms')} ms")
                yield Row(f"guest.migrate_{direction}", f"ckpt migrate of the C target {direction} the {where}: "
                          "downtime", s.get("bytes_sent") or 0, (s["downtime_ms"] / 1e3,), notes=notes)
        finally:
            ac.close()
