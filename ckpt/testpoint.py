"""Named points where a test can make ckpt stop, to kill it at an exact moment (kill-safety tests).

``CKPT_TEST_PAUSE_AT=NAME[,NAME…]``: on reaching :func:`pause_point` with one of
those names ckpt prints ``ckpt: paused at NAME`` on stderr and stops itself
(SIGSTOP); the test then kills it (or sends SIGCONT).  Unset, a point costs one
environment lookup.  Points: ``uffd-parked`` (a new tracker's userfaultfd is
parked in the running target, before its state file is written), ``collected``
(a delta's get+clear is done, its image not written yet).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["pause_point"]


def pause_point(name: str) -> None:
    want = os.environ.get("CKPT_TEST_PAUSE_AT")
    if want and name in want.split(","):
        print(f"ckpt: paused at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
