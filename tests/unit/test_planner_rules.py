"""The scaling rules: jump up, shrink slowly (delay, margin, step, lifetime, pending start),
scale to zero."""

from __future__ import annotations

from collections.abc import Mapping

from services.planner.core.rules import ScaleRules
from services.planner.core.settings import PlannerSettings
from services.planner.core.types import Observation, Pool, PoolState

SETTINGS = PlannerSettings(
    scale_down_delay_s=60.0, min_lifetime_s=100.0, scale_down_step=1, interval_s=10.0
)


def pools(prefill: int, decode: int, starting: int = 0) -> dict[Pool, PoolState]:
    return {"prefill": PoolState(prefill, starting), "decode": PoolState(decode)}


def tick(
    rules: ScaleRules,
    now: float,
    have: dict[Pool, PoolState],
    need: Mapping[Pool, int],
    arrivals: int = 10,
) -> dict[Pool, int]:
    idle = rules.idle(Observation(now_s=now, arrivals=arrivals, interval_s=10.0))
    wanted, _ = rules.apply(now, have, need, need, idle)
    rules.commit(now, have, wanted)
    return wanted


def test_scale_up_jumps_to_the_need() -> None:
    rules = ScaleRules(SETTINGS)
    assert tick(rules, 10.0, pools(2, 1), {"prefill": 7, "decode": 3}) == {
        "prefill": 7,
        "decode": 3,
    }


def test_scale_down_waits_for_the_delay_then_steps_one_at_a_time() -> None:
    rules = ScaleRules(SETTINGS)
    have = pools(5, 2)
    low: dict[Pool, int] = {"prefill": 2, "decode": 2}
    counts = [tick(rules, 10.0 * t, have, low)["prefill"] for t in range(1, 7)]
    assert counts[:5] == [5] * 5  # 60 s of observation first
    assert counts[5] == 4  # then one worker per tick
    have = pools(4, 2)
    assert tick(rules, 70.0, have, low)["prefill"] == 3


def test_scale_down_follows_the_largest_need_of_the_delay() -> None:
    rules = ScaleRules(SETTINGS)
    needs = [5, 5, 2, 2, 2, 2, 2, 2, 2]
    results = [
        tick(rules, 10.0 * (t + 1), pools(5, 2), {"prefill": n, "decode": 2})["prefill"]
        for t, n in enumerate(needs)
    ]
    assert results[:8] == [5] * 8  # a need of 5 was seen at t=20, within 60 s up to t=80
    assert results[8] == 4


def test_no_scale_down_while_a_scale_up_is_pending_or_within_the_lifetime() -> None:
    rules = ScaleRules(SETTINGS)
    for t in range(1, 8):
        tick(rules, 10.0 * t, pools(2, 2), {"prefill": 2, "decode": 2})
    assert tick(rules, 80.0, pools(2, 2), {"prefill": 6, "decode": 2})["prefill"] == 6
    low: dict[Pool, int] = {"prefill": 2, "decode": 2}
    assert tick(rules, 150.0, pools(2, 2, starting=4), low)["prefill"] == 6  # pending
    assert tick(rules, 170.0, pools(6, 2), low)["prefill"] == 6  # lifetime: 100 s from 80
    assert tick(rules, 190.0, pools(6, 2), low)["prefill"] == 5


def test_scale_to_zero_after_idle_and_back_on_the_first_request() -> None:
    settings = PlannerSettings(
        scale_to_zero=True,
        idle_s=30.0,
        prefill_min=0,
        decode_min=0,
        min_lifetime_s=0.0,
        scale_down_delay_s=0.0,
    )
    rules = ScaleRules(settings)
    assert rules.floor("prefill", idle=False) == 1
    tick(rules, 10.0, pools(1, 1), {"prefill": 1, "decode": 1}, arrivals=3)
    for now in (20.0, 30.0):  # quiet, not idle yet: the planner sizes at its floor of 1
        assert tick(rules, now, pools(1, 1), {"prefill": 1, "decode": 1}, arrivals=0) == {
            "prefill": 1,
            "decode": 1,
        }
    assert tick(rules, 40.0, pools(1, 1), {"prefill": 0, "decode": 0}, arrivals=0) == {
        "prefill": 0,
        "decode": 0,
    }
    assert tick(rules, 50.0, pools(0, 0), {"prefill": 1, "decode": 1}, arrivals=1) == {
        "prefill": 1,
        "decode": 1,
    }


def test_scale_to_zero_keeps_a_pool_of_max_zero_empty() -> None:
    """A pool capped at 0 (no prefill workers without the KV store) stays empty when the
    pools come back from zero."""
    rules = ScaleRules(PlannerSettings(scale_to_zero=True, prefill_min=0, prefill_max=0))
    assert (rules.floor("prefill", idle=False), rules.floor("decode", idle=False)) == (0, 1)


def test_an_empty_fleet_stays_empty_until_a_request() -> None:
    """Started at zero: not brought up to the floor before any request; the first one
    (a request waiting at the router) brings the pools up."""
    rules = ScaleRules(PlannerSettings(scale_to_zero=True, idle_s=300.0))
    empty = pools(0, 0)
    assert rules.idle(Observation(now_s=10.0, arrivals=0, interval_s=10.0, pools=empty))
    assert not rules.idle(Observation(now_s=20.0, arrivals=1, interval_s=10.0, pools=empty))
    starting = pools(0, 0, starting=1)
    assert not rules.idle(Observation(now_s=30.0, arrivals=0, interval_s=10.0, pools=starting))


def test_without_scale_to_zero_the_minimum_holds() -> None:
    rules = ScaleRules(PlannerSettings(idle_s=1.0))
    for now in (10.0, 20.0, 30.0):
        rules.idle(Observation(now_s=now, arrivals=0, interval_s=10.0))
    assert not rules.idle(Observation(now_s=40.0, arrivals=0, interval_s=10.0))
    assert rules.floor("decode", idle=False) == 1
