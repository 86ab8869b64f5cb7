"""Named points where a test can make ckpt die, stop or fail, to prove what that leaves behind.

``CKPT_TEST_HOOK=NAME:ACTION[:N]`` (read once, at import): the N-th time
(default 1) this process passes :func:`point` ``NAME``, it

* ``kill``: SIGKILLs itself;
* ``stop``: says ``ckpt: paused at NAME`` on stderr and SIGSTOPs itself (the
  test then kills it, or signals it and sends SIGCONT);
* ``fail``: raises :class:`InjectedFailure`, which takes the path of any other
  failure.

Unset, :func:`point` is one comparison (it sits on every injected call).
Only the test suite and ``bench/stress.py`` set it; nothing else about ckpt
changes with it.

Points: ``inject.loaded``, ``inject.entered``, ``inject.done`` (each phase of a
call injected into a target), ``release.mask`` (a thread half put back),
``uffd-parked`` (a new tracker's userfaultfd is parked in the running target,
before its state file is written), ``collected`` (a delta's get+clear is
done, its image not written yet), ``netlock.locked`` (a connection's lock is in
ckpt's owned table), ``tcp.repairing`` (a socket is in repair mode),
``netlock.persisted`` (the locks outlive this run, the target not ended yet),
and the :data:`RESTORE_POINTS`.
"""

from __future__ import annotations

import os
import signal
import sys

from .errors import CkptError

__all__ = ["RESTORE_POINTS", "InjectedFailure", "point"]

#: The points of a restore, in the order a restore reaches them.
RESTORE_POINTS = {
    "restore-helper-created": "the root's helper exists, not seized yet (-d: its intermediate too)",
    "restore-helper-seized": "the root's helper is seized, nothing injected into it yet",
    "restore-helpers-cloned": "a process's helper is emptied and its children's helpers are cloned",
    "restore-memory-filled": "a process's memory is mapped and filled",
    "restore-thread-cloned": "a thread is cloned (traced already), not yet seen stopped and recorded",
    "restore-threads-created": "a process's threads and resources are restored, not let go yet",
    "restore-handing-over": "every process is built; none is let go yet",
}

_ACTIONS = ("kill", "stop", "fail")


class InjectedFailure(CkptError):
    """The failure a test asked for at a named point (``CKPT_TEST_HOOK=NAME:fail``)."""


def _parse(spec: str | None) -> tuple[str, str, int] | None:
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    action, _, nth = rest.partition(":")
    action = action or "kill"
    if not name or action not in _ACTIONS:
        return None
    return name, action, int(nth) if nth.isdigit() else 1


_HOOK = _parse(os.environ.get("CKPT_TEST_HOOK"))
_seen = 0


def point(name: str) -> None:
    """Pass the point ``name`` (see the module docstring)."""
    global _seen
    if _HOOK is None or _HOOK[0] != name:
        return
    _seen += 1
    if _seen != _HOOK[2]:
        return
    action = _HOOK[1]
    if action == "fail":
        raise InjectedFailure(f"injected failure at {name} (CKPT_TEST_HOOK)")
    if action == "stop":
        print(f"ckpt: paused at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
