"""What this kernel offers the tests: tracking back-ends and page listings, each a skip when absent.

The same test files run on this host (6.18: uffd-wp, PAGEMAP_SCAN, no soft-dirty)
and in the guests of ``make test-kernels`` (6.1: soft-dirty and pagemap reads
only; 6.12: all): a test names the back-end it needs and is skipped, saying why,
where the kernel lacks it.  The pagemap-read listing runs everywhere: on a kernel
with PAGEMAP_SCAN it is forced with ckpt's test aid ``CKPT_DISABLE``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ckpt import features
from ckpt.errors import Unsupported

METHODS = ("uffd-wp", "soft-dirty", "hash")
LISTINGS = ("pagemap-scan", "pagemap-read")


def _clear_probes() -> None:
    features.disabled.cache_clear()
    features._cheap_probe.cache_clear()


def need_method(method: str) -> None:
    """Skip unless ``method`` tracks on this kernel (under the listing in force)."""
    try:
        features.select_tracking(features.tracking_working(), method)
    except Unsupported:
        off = os.environ.get(features.DISABLE_ENV)
        pytest.skip(f"{method} does not work on kernel {platform.release()}"
                    + (f" with {features.DISABLE_ENV}={off}" if off else ""))


@contextmanager
def listing(name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pages listed by PAGEMAP_SCAN (skip where absent) or by pagemap reads (forced with CKPT_DISABLE)."""
    if name == "pagemap-scan":
        if not features.pagemap_scan_works():
            pytest.skip(f"no PAGEMAP_SCAN on kernel {platform.release()}")
        yield
        return
    if features.pagemap_scan_works():
        monkeypatch.setenv(features.DISABLE_ENV, "pagemap_scan")
        _clear_probes()
    try:
        assert not features.pagemap_scan_works()
        yield
    finally:
        monkeypatch.delenv(features.DISABLE_ENV, raising=False)
        _clear_probes()
