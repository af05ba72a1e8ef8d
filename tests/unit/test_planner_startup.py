"""The measured start-up time (the planner's lead time), table-driven: fleet reports at ticks
in, start-ups out."""

from __future__ import annotations

import pytest

from services.planner.core.types import PoolState
from services.planner.startup import StartupClock

S = PoolState


@pytest.mark.parametrize(("reports", "done", "lead"), [
    # one worker asked at t=10, serving at t=40: 30 s
    ([(0, S(1)), (10, S(1, starting=1)), (20, S(1, starting=1)), (40, S(2))], [30.0], 30.0),
    # two asked at once, served one at a time: first started, first served
    ([(0, S(1)), (10, S(1, starting=2)), (30, S(2, starting=1)), (50, S(3))],
     [20.0, 40.0], 40.0),
    # a start that vanished (crashed) leaves no sample; the next one is timed from its own ask
    ([(0, S(1)), (10, S(1, starting=1)), (20, S(1)), (30, S(1, starting=1)), (45, S(2))],
     [15.0], 15.0),
    # a pool that grows by a worker never reported starting or asked for is no sample
    ([(0, S(1)), (10, S(2))], [], None),
    # asked at t=3, started and served between two reports: timed from the ask
    ([(0, S(1)), (3, "ask"), (10, S(2))], [7.0], 7.0),
    # two asked, both up within one report
    ([(0, S(1)), (3, "ask"), (10, S(3))], [7.0, 7.0], 7.0),
    # asked, then seen starting: timed from the report that saw it (the ask is spent)
    ([(0, S(1)), (3, "ask"), (10, S(1, starting=1)), (20, S(2))], [10.0], 10.0),
    # an ask is spent by the start it timed: a later unexplained growth is no sample
    ([(0, S(1)), (3, "ask"), (10, S(2)), (20, S(3))], [7.0], 7.0),
])
def test_startups(reports: list[tuple[float, PoolState | str]], done: list[float],
                  lead: float | None) -> None:
    clock = StartupClock()
    seen = []
    for now, state in reports:
        if isinstance(state, str):
            clock.asked(now, "decode")
        else:
            seen += clock.observe(now, {"decode": state})
    assert seen == done
    assert clock.lead_s == lead


def test_the_lead_time_is_the_longest_recent_start_of_any_pool() -> None:
    clock = StartupClock(samples=2)
    clock.observe(0, {"prefill": S(0, starting=1), "decode": S(0, starting=1)})
    clock.observe(50, {"prefill": S(1), "decode": S(0, starting=1)})
    assert clock.lead_s == 50
    clock.observe(60, {"prefill": S(1), "decode": S(1)})
    assert clock.lead_s == 60
    clock.observe(70, {"prefill": S(1, starting=1), "decode": S(1, starting=1)})
    clock.observe(75, {"prefill": S(2), "decode": S(2)})
    assert list(clock.recent) == [5, 5] and clock.lead_s == 5  # only the latest 2
