"""A scratch area for injected syscalls: the caller's, or a fresh one for the duration of a call.

The restorer owns one scratch page in the helper (RestoreContext.scratch) and
passes it in; tests and one-off callers let the module map and unmap its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from ..control.inject import Injector, Scratch

__all__ = ["scratch_for"]


@contextmanager
def scratch_for(inj: Injector, scratch: Scratch | None, size: int) -> Iterator[Scratch]:
    """``scratch`` if it is given and big enough, else an area of ``size`` bytes mapped for the block."""
    if scratch is not None and scratch.size >= size:
        with nullcontext(scratch) as s:
            yield s
        return
    with inj.scratch(size) as s:
        yield s
