"""Named points where a test can make ckpt die or stop, to prove what a death there leaves behind.

``CKPT_TEST_HOOK=NAME:ACTION[:N]`` (read once, at import): the N-th time
(default 1) this process passes :func:`point` ``NAME``, it SIGKILLs itself
(ACTION ``kill``) or says ``ckpt: paused at NAME`` on stderr and SIGSTOPs
itself (``stop``: the test then kills it, or signals it and sends SIGCONT).
Unset, :func:`point` is one comparison.  Only the test suite and the stress
bench set it; nothing else about ckpt changes with it.

Points: ``inject.loaded``, ``inject.entered``, ``inject.done`` (each phase of a
call injected into a target), ``release.mask`` (a thread half put back),
``uffd-parked`` (a new tracker's userfaultfd is parked in the running target,
before its state file is written), ``collected`` (a delta's get+clear is done,
its image not written yet).
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["point"]


def _parse(spec: str | None) -> tuple[str, int, int] | None:
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    action, _, nth = rest.partition(":")
    sig = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}.get(action or "kill")
    if not name or sig is None:
        return None
    return name, sig, int(nth) if nth.isdigit() else 1


_HOOK = _parse(os.environ.get("CKPT_TEST_HOOK"))
_seen = 0


def point(name: str) -> None:
    """Pass the point ``name`` (see the module docstring)."""
    global _seen
    if _HOOK is None or _HOOK[0] != name:
        return
    _seen += 1
    if _seen == _HOOK[2]:
        if _HOOK[1] == signal.SIGSTOP:
            print(f"ckpt: paused at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), _HOOK[1])
