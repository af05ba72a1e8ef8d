"""A decision as the planner records it: its direction against the fleet, the Plan message
(an infinite prediction kept finite for JSON clients), and the stream entry with its inputs."""

from __future__ import annotations

import json
import math

import pytest

from services.planner.core.settings import PlannerSettings
from services.planner.core.types import Alternative, Decision, Observation, PoolState
from services.planner.decisions import direction, plan_message, record_json


def decision(prefill: int, decode: int, ttft: float = 0.2) -> Decision:
    return Decision(desired={"prefill": prefill, "decode": decode}, reason="r",
                    forecast_rate=12.0, predicted_ttft_p=ttft, predicted_itl_p=0.04,
                    alternatives=(Alternative({"prefill": prefill, "decode": decode - 1},
                                              0.2, math.inf, 3.5, "misses ITL"),),
                    corrections={"decode": 1.3}, needed={"prefill": prefill, "decode": decode})


def seen(prefill: PoolState, decode: PoolState) -> Observation:
    return Observation(now_s=10.0, arrivals=50, interval_s=5.0, observed_ttft_p=0.3,
                       pools={"prefill": prefill, "decode": decode}, waiting={"decode": 4})


@pytest.mark.parametrize(("wanted", "fleet", "moved"), [
    ((1, 3), (PoolState(1), PoolState(2)), "up"),
    ((1, 3), (PoolState(1), PoolState(2, starting=1)), "hold"),  # the start is counted
    ((1, 2), (PoolState(1), PoolState(3)), "down"),
    ((2, 2), (PoolState(1), PoolState(3)), "up"),  # one pool grows: up
    ((1, 3), (PoolState(1), PoolState(3, draining=2)), "hold"),  # draining ones don't count
])
def test_direction(wanted: tuple[int, int], fleet: tuple[PoolState, PoolState],
                   moved: str) -> None:
    assert direction(decision(*wanted), seen(*fleet)) == moved


def test_plan_message_and_stream_entry() -> None:
    observation = seen(PoolState(1), PoolState(2, starting=1, draining=1))
    plan = plan_message(7, decision(1, 3, ttft=math.inf), observation, PlannerSettings(),
                        "local", 1234.5)
    assert (plan.sequence, plan.prefill_replicas, plan.decode_replicas) == (7, 1, 3)
    assert plan.predicted_ttft_ms == 1e12  # infinite: over capacity
    assert plan.observed_rate == 10.0 and plan.observed_ttft_ms == pytest.approx(300)
    assert plan.observed_itl_ms == 0  # no sample
    decode = plan.pools[1]
    assert (decode.pool, decode.desired, decode.ready, decode.starting, decode.draining,
            decode.correction) == ("decode", 3, 2, 1, 1, pytest.approx(1.3))
    assert plan.alternatives[0].rejected == "misses ITL"
    assert dict(plan.waiting) == {"decode": 4}
    entry = json.loads(record_json(plan, observation))
    assert entry["plan"]["sequence"] == "7"  # uint64 as a string (proto JSON)
    assert entry["observation"]["arrivals"] == 50
    assert entry["observation"]["pools"]["decode"] == {"ready": 2, "starting": 1, "draining": 1}
