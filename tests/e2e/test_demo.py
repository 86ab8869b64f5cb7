"""`make demo` is what a newcomer runs first: it must pass on this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo seizes a process: needs root")
def test_demo_passes() -> None:
    res = subprocess.run([sys.executable, "-m", "ckpt.cli", "demo"], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS:" in res.stdout and "still running" in res.stdout
    assert "OK (3 image(s) in the chain" in res.stdout  # two pre-dumps and the final delta
    assert "the same: yes" in res.stdout
