"""ckpt/resources/seccomp.py without a process: the filter tree of a dump, a hostile image's chains, the
return instructions a refusal looks at."""

from __future__ import annotations

import struct

import pytest

from ckpt.errors import RestoreError
from ckpt.image.pb import process_pb2
from ckpt.kernel.seccomp import SECCOMP_RET_USER_NOTIF, returns
from ckpt.resources.seccomp import Chains, Filter, chain_of


def _ret(k: int, *, a: bool = False) -> bytes:
    return struct.pack("<HBBI", 0x06 | (0x10 if a else 0), 0, 0, k)


A, B, C = Filter(_ret(1), 0), Filter(_ret(2), 2), Filter(_ret(3), 0)


def test_chains_share_filters_from_the_oldest_while_equal() -> None:
    c = Chains()
    c.add(10, 2, [A])
    c.add(11, 2, [A, B])
    c.add(12, 2, [C, B])    # B after another filter: not the same B
    c.add(13, 1, [])
    msg = c.msg
    assert [(f.program, f.flags, f.parent) for f in msg.filters] == \
        [(A.program, 0, 0), (B.program, 2, 1), (C.program, 0, 0), (B.program, 2, 3)]
    chains = {t.tid: chain_of(msg, t) for t in msg.threads}
    assert chains == {10: [1], 11: [1, 2], 12: [3, 4], 13: []}
    assert [t.mode for t in msg.threads] == [2, 2, 2, 1]


@pytest.mark.parametrize("filters,start", [([0, 2], 2), ([5], 1), ([1], 1), ([0], 3)])
def test_a_broken_chain_is_refused(filters: list[int], start: int) -> None:
    """A parent out of range, or a loop (a filter its own parent): a RestoreError, not a hang."""
    msg = process_pb2.Seccomp(filters=[process_pb2.SeccompFilter(program=A.program, parent=p) for p in filters])
    t = msg.threads.add(tid=1, mode=2, filter=start)
    with pytest.raises(RestoreError, match="chain is broken"):
        chain_of(msg, t)


def test_returns_tells_constant_and_computed_answers() -> None:
    prog = struct.pack("<HBBI", 0x20, 0, 0, 0) + _ret(SECCOMP_RET_USER_NOTIF) + _ret(0, a=True)
    assert returns(prog) == [(True, SECCOMP_RET_USER_NOTIF), (False, 0)]
