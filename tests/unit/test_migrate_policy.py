"""The switch-over decision of live migration (pure logic: no process, no socket)."""

from __future__ import annotations

import math

from ckpt.migrate.policy import Iteration, SwitchPolicy

P = 4096
GIB_PAGES = 262144


def _it(i: int, pages: int, seconds: float, ratio: float = 0.25) -> Iteration:
    return Iteration(i, pages, pages * P, int(pages * P * ratio), seconds)


def test_no_prediction_before_a_delta() -> None:
    p = SwitchPolicy()
    p.record(_it(0, GIB_PAGES, 1.0))
    assert math.isinf(p.predict()[0]) and not p.decide().switch


def test_switches_when_the_last_delta_fits() -> None:
    # 1 GiB in 1 s; then ~2,600 pages written per second (1 % per second at 10 MB/s)
    p = SwitchPolicy(max_downtime=0.1, fixed_cost=0.05)
    p.record(_it(0, GIB_PAGES, 1.0))
    p.record(_it(1, 2600, 0.05))         # written during the 1 s full copy
    seconds, wire = p.predict()          # 2600 pages/s × 0.05 s ≈ 130 pages
    assert 100 * P * 0.2 < wire < 160 * P * 0.3
    assert seconds < 0.1 and p.decide().switch and "fits" in p.decide().reason


def test_keeps_going_while_the_delta_shrinks_then_caps() -> None:
    p = SwitchPolicy(max_downtime=0.001, fixed_cost=0.05, max_iterations=5)
    p.record(_it(0, GIB_PAGES, 1.0))
    for i, pages in enumerate([50000, 20000, 8000], 1):
        p.record(_it(i, pages, pages / 50000))
        assert not p.decide().switch  # converging, budget not met
    p.record(_it(4, 3000, 0.06))
    d = p.decide()
    assert d.switch and "cap" in d.reason


def test_stops_when_not_converging() -> None:
    p = SwitchPolicy(max_downtime=0.001, fixed_cost=0.05)
    p.record(_it(0, GIB_PAGES, 1.0))
    decisions = []
    for i in range(1, 6):  # the target writes as fast as the link drains: rounds do not shrink
        p.record(_it(i, 40000, 0.8))
        decisions.append(p.decide())
    assert [d.switch for d in decisions][:2] == [False, False]
    first = next(d for d in decisions if d.switch)
    assert "not converging" in first.reason
