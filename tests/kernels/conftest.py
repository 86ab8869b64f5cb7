"""`make test-kernels` (see suite.py): the session's runner and the summary table at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from suite import RESULTS, Runner, table

_runner: Runner | None = None


@pytest.fixture(scope="session")
def runner() -> Iterator[Runner]:
    global _runner
    from targets import build_c

    # On the host: the guests see the binaries (the cases' and those of the e2e tests they run).
    for name in ("cr_target", "mig_writer", "vdso_clock", "locks", "pty_pair", "aio", "fdflags", "unix_pairs"):
        build_c(name)
    _runner = Runner()
    try:
        yield _runner
    finally:
        _runner.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if _runner is None:
        return
    text, doc = table(_runner.runs)
    doc["total_seconds"] = round(time.monotonic() - _runner.started, 1)
    failures = [f"  {o.kernel} {o.case}{' --track ' + o.track if o.track else ''}: {o.detail}"
                for r in _runner.runs.values() for o in r.outcomes if o.ok is False]
    tw = terminalreporter
    tw.section("supported kernels (make test-kernels)")
    tw.line(text)
    if failures:
        tw.line("failed:")
        for f in failures:
            tw.line(f)
    tw.line(f"total {doc['total_seconds']:.0f} s; JSON in {RESULTS}")
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
