"""Named points of a run where a test can stop ckpt or make it fail, to prove what a kill or a failure leaves.

``CKPT_STOP_AT=NAME[,NAME...]``: on reaching a listed point (the first
time: some are passed once per process of a tree), ckpt stops itself
(SIGSTOP), so the test sees it stopped (``waitpid(WUNTRACED)``) at a known
instant and kills it there, or lets it go on (SIGCONT).
``CKPT_FAIL_AT=NAME[,NAME...]``: the point raises :class:`InjectedFailure`,
which takes the same path as any other failure.  Unset (the normal case),
a point costs two environment look-ups.  The points are listed in :data:`POINTS`.
"""

from __future__ import annotations

import os
import signal

from .errors import CkptError

__all__ = ["POINTS", "InjectedFailure", "point"]

#: Every point, with where it is.
POINTS = {
    "restore-helper-created": "the root's helper exists, not seized yet (the intermediate too with -d)",
    "restore-helper-seized": "the root's helper is seized, nothing injected into it yet",
    "restore-helpers-cloned": "a process's helper is emptied and the helpers of its children are cloned",
    "restore-memory-filled": "a process's memory is mapped and filled",
    "restore-threads-created": "a process's threads and resources are restored, not let go yet",
    "restore-handing-over": "every process is built; none is let go yet",
}


class InjectedFailure(CkptError):
    """The failure a test asked for at a named point (``CKPT_FAIL_AT``)."""


_stopped: set[str] = set()


def _listed(var: str) -> frozenset[str]:
    return frozenset(filter(None, os.environ.get(var, "").split(",")))


def point(name: str) -> None:
    """Stop here (SIGSTOP) or fail here if a test asked for ``name`` in the environment."""
    assert name in POINTS, name
    if name in _listed("CKPT_STOP_AT") and name not in _stopped:
        _stopped.add(name)
        os.kill(os.getpid(), signal.SIGSTOP)
    if name in _listed("CKPT_FAIL_AT"):
        raise InjectedFailure(f"injected failure at {name} (CKPT_FAIL_AT)")
