"""`make test-kernels` machinery: one guest per kernel at a time, its boot shared by that kernel's tests; a summary.

The kernels are ``$CKPT_TEST_KERNELS`` (comma-separated; default ``host,6.1,6.12``): ``host``
runs the cases on this machine, the others in a QEMU guest (guest.py).  Every case's result is
kept, printed as a table at the end and written as JSON to ``$CKPT_KERNELS_JSON`` (default
tests/kernels/results.json): what the README's "Supported kernels" table is filled from.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import across
from guest import Guest, GuestError

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KERNELS = [k for k in os.environ.get("CKPT_TEST_KERNELS", "host,6.1,6.12").split(",") if k]
RESULTS = Path(os.environ.get("CKPT_KERNELS_JSON") or HERE / "results.json")
#: A case in a guest is only bounded against a hang (TCG runs 20-30x slower than the host).
CASE_TIMEOUT = 1200.0


@dataclass
class Outcome:
    """One case on one kernel."""

    kernel: str
    case: str
    track: str | None
    ok: bool | None  # None: not run (the kernel does not offer the back-end)
    detail: str
    seconds: float
    extra: dict = field(default_factory=dict)


@dataclass
class KernelRun:
    """What was measured for one kernel: its release, boot time, qemu's peak RSS, the outcomes."""

    name: str
    release: str = ""
    boot_seconds: float | None = None
    qemu_rss_mib: float | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    backends: list[str] | None = None  # from the check case


class Runner:
    """Runs cases.py on a kernel: in the one guest up at a time (booted once per kernel), or here."""

    def __init__(self) -> None:
        self.guest: Guest | None = None
        self.failed: dict[str, str] = {}  # kernel -> why its guest could not be booted
        self.runs: dict[str, KernelRun] = {k: KernelRun(k) for k in KERNELS}
        self.started = time.monotonic()
        #: This host's port a guest reaches at guest.HOST_FROM_GUEST (a receiver of migrations from it).
        self.host_port = across.free_port()
        self._across: across.Across | None = None

    def _guest(self, kernel: str) -> Guest:
        if self.guest is not None and (self.guest.kernel.alias != kernel or not self.guest.alive()):
            self.stop()
        if kernel in self.failed:
            pytest.fail(f"the {kernel} guest did not boot: {self.failed[kernel]}", pytrace=False)
        if self.guest is None:
            try:
                # the tree does not change during the run; the ports are for the migrations (across.py)
                self.guest = Guest(kernel, cache="loose", fwd={0: across.GUEST_PORT},
                                   guestfwd=[self.host_port]).start()
            except GuestError as e:
                self.failed[kernel] = str(e)
                raise
            run = self.runs[kernel]
            run.release, run.boot_seconds = self.guest.uname or "", self.guest.boot_seconds
            print(f"\n{kernel}: {self.guest.uname} booted in {self.guest.boot_seconds:.1f}s", file=sys.stderr)
        return self.guest

    def case(self, kernel: str, case: str, track: str | None = None) -> Outcome:
        """Run one case; its outcome (recorded) and the command's output."""
        argv = [sys.executable, str(HERE / "cases.py"), case, *(["--track", track] if track else [])]
        t0 = time.monotonic()
        if kernel == "host":
            self.runs[kernel].release = platform.release()
            p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=CASE_TIMEOUT)
            rc, out, err = p.returncode, p.stdout, p.stderr
        else:
            g = self._guest(kernel)
            r = g.run(argv, cwd=REPO, timeout=CASE_TIMEOUT)
            rc, out, err = r.rc, r.stdout, r.stderr
            rss = (g.rss_kib() or 0) / 1024
            run = self.runs[kernel]
            run.qemu_rss_mib = max(run.qemu_rss_mib or 0, round(rss))
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("CASE-RESULT ")), None)
        if line is None:
            res = {"ok": False, "detail": f"no result (exit {rc}): {(err or out).strip()[-500:]}", "extra": {}}
        else:
            res = json.loads(line[len("CASE-RESULT "):])
        o = Outcome(kernel, case, track, res["ok"], res["detail"], round(time.monotonic() - t0, 1),
                    res.get("extra") or {})
        self.runs[kernel].outcomes.append(o)
        if case == "check" and "backends" in o.extra:
            self.runs[kernel].backends = o.extra["backends"]
        o.extra["output"] = (out + ("\n" + err if err.strip() else ""))[-6000:]
        return o

    def across(self, kernel: str, case: str) -> Outcome:
        """Run one case between this host and the kernel's guest (across.py); its outcome (recorded)."""
        g = self._guest(kernel)
        if self._across is None or self._across.g is not g:
            self._across = across.Across(g, self.host_port)
        method, args = across.CASES[case]
        t0 = time.monotonic()
        try:
            extra, ok, detail = getattr(self._across, method)(*args), True, "ok"
        except (across.CaseFailed, GuestError) as e:
            extra, ok, detail = {}, False, str(e)
        o = Outcome(kernel, f"across:{case}", None, ok, detail, round(time.monotonic() - t0, 1), extra)
        run = self.runs[kernel]
        run.outcomes.append(o)
        run.qemu_rss_mib = max(run.qemu_rss_mib or 0, round((g.rss_kib() or 0) / 1024))
        return o

    def skip(self, kernel: str, case: str, track: str | None, why: str) -> None:
        self.runs[kernel].outcomes.append(Outcome(kernel, case, track, None, why, 0.0))

    def stop(self) -> None:
        if self._across is not None:
            self._across.close()
            self._across = None
        if self.guest is not None:
            self.guest.stop()
            self.guest = None


def _cell(outs: list[Outcome]) -> str:
    if not outs:
        return "-"
    if all(o.ok is None for o in outs):
        return "n/a"
    return "pass" if all(o.ok for o in outs if o.ok is not None) else "FAIL"


def _counted_cell(outs: list[Outcome]) -> str:
    """pass with how many runs passed (of a test file: for dropped pages, each back-end × listing the kernel has)."""
    cell = _cell(outs)
    n = sum(o.extra.get("passed", 0) for o in outs)
    return f"{cell} ({n} runs)" if cell == "pass" and n else cell


def table(runs: dict[str, KernelRun]) -> tuple[str, dict]:
    """The summary table (markdown) and the JSON document."""
    tracks = ("uffd-wp", "soft-dirty", "hash")
    rows = ["| kernel | back-ends found | check | dump/restore (C threads, Python) | "
            + " | ".join(f"chain {t}" for t in tracks) + " | merge | dropped pages | descriptors, files, ttys, sockets | to/from this host (restore, migrate) "
            "| boot | qemu RSS |",
            "|---" * (10 + len(tracks)) + "|"]
    doc: dict = {"kernels": []}
    for run in runs.values():
        if not run.outcomes:
            continue
        by = lambda case, track=None: [o for o in run.outcomes if o.case == case and o.track == track]  # noqa: E731
        dr = by("c-threads") + by("python")
        cells = [f"{run.name} ({run.release})" if run.name != "host" else f"{run.release} (this host)",
                 ", ".join(run.backends or []) or "?", _cell(by("check")),
                 _cell(dr) if len({o.ok for o in dr}) < 2 else
                 ", ".join(f"{o.case} {'pass' if o.ok else 'FAIL'}" for o in dr),
                 *(_cell(by("chain", t)) for t in tracks), _cell(by("merge")), _counted_cell(by("dropped")),
                 _counted_cell(by("fidelity")),
                 _cell([o for o in run.outcomes if o.case.startswith("across:")]),
                 f"{run.boot_seconds:.0f} s" if run.boot_seconds else "-",
                 f"{run.qemu_rss_mib:.0f} MiB" if run.qemu_rss_mib else "-"]
        rows.append("| " + " | ".join(cells) + " |")
        doc["kernels"].append({
            "name": run.name, "release": run.release, "backends": run.backends, "boot_seconds": run.boot_seconds,
            "qemu_rss_mib": run.qemu_rss_mib,
            "cases": [{"case": o.case, "track": o.track, "ok": o.ok, "detail": o.detail, "seconds": o.seconds,
                       **{k: v for k, v in o.extra.items() if k != "output"}} for o in run.outcomes]})
    return "\n".join(rows), doc
