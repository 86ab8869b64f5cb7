"""ckpt on the kernels users run: Debian 12's 6.1 and Debian 13's 6.12 in QEMU guests, and this host's.

Per kernel, in this order (one guest boot for all of them): ``ckpt check``; dump and restore of
a multi-threaded C target and of a Python target; a pre-dump chain with every tracking back-end
``ckpt check`` found there, then a final delta dump and a restore; ``ckpt merge`` of a chain and
a restore of the merged image.  What each case does is in cases.py.  Then, with the 6.12 guest still up,
the cases between it and this host (across.py): a C and a Python target dumped on one side and
restored on the other, and migrated, both ways.  A back-end the kernel lacks
is skipped, saying so; everything else that does not work fails.  Run by ``make test-kernels``
(not by ``make test``: tests/conftest.py leaves this directory out).
"""

from __future__ import annotations

import pytest

from across import CASES as ACROSS
from suite import ACROSS_KERNELS, KERNELS, Runner

TRACKS = ("uffd-wp", "soft-dirty", "hash")
CASES = [("check", None), ("c-threads", None), ("python", None), *(("chain", t) for t in TRACKS), ("merge", None)]

pytestmark = pytest.mark.timeout(1800)


@pytest.mark.parametrize("kernel,case,track", [(k, c, t) for k in KERNELS for c, t in CASES],
                         ids=[f"{k}-{c}{'-' + t if t else ''}" for k in KERNELS for c, t in CASES])
def test_kernel(runner: Runner, kernel: str, case: str, track: str | None) -> None:
    found = runner.runs[kernel].backends
    if track is not None and found is not None and track not in found:
        why = f"ckpt check found no {track} on this kernel (found: {', '.join(found)})"
        runner.skip(kernel, case, track, why)
        pytest.skip(why)
    o = runner.case(kernel, case, track)
    print(o.extra.get("output", ""))
    assert o.ok, f"{kernel} {case}{' --track ' + track if track else ''}: {o.detail}"


@pytest.mark.parametrize("kernel,case", [(k, c) for k in ACROSS_KERNELS for c in ACROSS],
                         ids=[f"{k}-across-{c}" for k in ACROSS_KERNELS for c in ACROSS])
def test_across(runner: Runner, kernel: str, case: str) -> None:
    o = runner.across(kernel, case)
    print({k: v for k, v in o.extra.items()})
    assert o.ok, f"{kernel} {case}: {o.detail}"
