"""ckpt on the kernels users run: Debian 12's 6.1 and Debian 13's 6.12 in QEMU guests, and this host's.

Per kernel, in this order (one guest boot for all of them): ``ckpt check``; dump and restore of
a multi-threaded C target and of a Python target; a pre-dump chain with every tracking back-end
``ckpt check`` found there, then a final delta dump and a restore; ``ckpt merge`` of a chain and
a restore of the merged image; pages dropped (MADV_DONTNEED, a THP zap) inside chains; descriptor kinds
(tests/e2e/test_fd_kinds.py) with file, terminal and socket state (cases.FIDELITY), in one pytest
run.  What each case does is in cases.py.  Then, the guest still up,
the cases between it and this host (across.py): with 6.12, a C and a Python target dumped on one
side and restored on the other, and migrated, both ways; with 6.1, a migration tracked with
soft-dirty from the guest to this host.  A back-end the kernel lacks is skipped, saying so;
everything else that does not work fails.  Run by ``make test-kernels`` (not by ``make test``:
tests/conftest.py leaves this directory out).
"""

from __future__ import annotations

import pytest

from across import KERNEL_CASES
from suite import KERNELS, Runner

TRACKS = ("uffd-wp", "soft-dirty", "hash")
CASES = [("check", None), ("c-threads", None), ("python", None), *(("chain", t) for t in TRACKS), ("merge", None),
         ("dropped", None), ("fidelity", None)]
#: Every case of every kernel, a kernel's cases together (its guest is booted once): (kernel, case, track);
#: a case between the guest and this host is "across:NAME".
ITEMS = [(k, c, t) for k in KERNELS
         for c, t in [*CASES, *((f"across:{a}", None) for a in KERNEL_CASES.get(k, ()))]]

pytestmark = pytest.mark.timeout(1800)


@pytest.mark.parametrize("kernel,case,track", ITEMS, ids=[f"{k}-{c}{'-' + t if t else ''}" for k, c, t in ITEMS])
def test_kernel(runner: Runner, kernel: str, case: str, track: str | None) -> None:
    if case.startswith("across:"):
        o = runner.across(kernel, case.removeprefix("across:"))
        print({k: v for k, v in o.extra.items()})
        assert o.ok, f"{kernel} {case}: {o.detail}"
        return
    found = runner.runs[kernel].backends
    if track is not None and found is not None and track not in found:
        why = f"ckpt check found no {track} on this kernel (found: {', '.join(found)})"
        runner.skip(kernel, case, track, why)
        pytest.skip(why)
    o = runner.case(kernel, case, track)
    print(o.extra.get("output", ""))
    assert o.ok, f"{kernel} {case}{' --track ' + track if track else ''}: {o.detail}"
