"""Named points where a test can make ckpt stop, to kill it at an exact moment (kill-safety tests), or fail.

``CKPT_TEST_PAUSE_AT=NAME[,NAME…]``: on reaching :func:`pause_point` with one of
those names ckpt prints ``ckpt: paused at NAME`` on stderr and stops itself
(SIGSTOP); the test then kills it (or sends SIGCONT).  Unset, a point costs one
environment lookup.  Points: ``uffd-parked`` (a new tracker's userfaultfd is
parked in the running target, before its state file is written), ``collected``
(a delta's get+clear is done, its image not written yet), and the
:data:`RESTORE_POINTS`.

``CKPT_TEST_FAIL_AT=NAME[,NAME…]``: :func:`fail_point` (and :func:`point`,
which pauses first) raises :class:`InjectedFailure` there, which takes the
path of any other failure.
"""

from __future__ import annotations

import os
import signal
import sys

from .errors import CkptError

__all__ = ["RESTORE_POINTS", "InjectedFailure", "pause_point", "fail_point", "point"]

#: The points of a restore (:func:`point`), in the order a restore reaches them.
RESTORE_POINTS = {
    "restore-helper-created": "the root's helper exists, not seized yet (-d: its intermediate too)",
    "restore-helper-seized": "the root's helper is seized, nothing injected into it yet",
    "restore-helpers-cloned": "a process's helper is emptied and its children's helpers are cloned",
    "restore-memory-filled": "a process's memory is mapped and filled",
    "restore-threads-created": "a process's threads and resources are restored, not let go yet",
    "restore-handing-over": "every process is built; none is let go yet",
}


class InjectedFailure(CkptError):
    """The failure a test asked for at a named point (``CKPT_TEST_FAIL_AT``)."""


def pause_point(name: str) -> None:
    want = os.environ.get("CKPT_TEST_PAUSE_AT")
    if want and name in want.split(","):
        print(f"ckpt: paused at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


def fail_point(name: str) -> None:
    want = os.environ.get("CKPT_TEST_FAIL_AT")
    if want and name in want.split(","):
        raise InjectedFailure(f"injected failure at {name} (CKPT_TEST_FAIL_AT)")


def point(name: str) -> None:
    """:func:`pause_point`, then :func:`fail_point`."""
    pause_point(name)
    fail_point(name)
