"""A sample of ``make stress`` (bench/stress.py): ckpt killed at ~20 random moments, the target never harmed.

Each kill (SIGKILL, SIGTERM or SIGINT, at a random part of the command's own
duration) hits a ``dump -R``, ``dump``, ``pre-dump``, ``migrate --dry-run``, the
``receive`` it talks to, or a ``restore -d`` of a self-checking 32 MiB target
(scenarios/mig_writer.c) — not the real migrations to a second host, whose
kills cost a whole migration each (~15-30 s here; ``make stress`` runs them);
after each, the target must run untraced with its
own masks and pass its check, and the next ckpt run must remove whatever the
killed one left.  The seed is printed: a failure can be replayed with
``bench/stress.py --seed N``.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import stress  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dump/restore needs root")


def test_twenty_random_kills_harm_no_target(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    print(f"stress seed {seed}")
    report = stress.run(kills=20, mib=32, seed=seed, work=tmp_path, ops=stress.LOCAL)
    print(report.text())
    assert report.kills >= 20, report.text()
    assert report.harmed == 0, f"seed {seed}:\n{report.text()}"
    assert report.leftovers_after_next_run == 0, f"seed {seed}:\n{report.text()}"
