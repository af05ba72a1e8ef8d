"""The planner's tick end to end on the H100 profile: sizing, forecast, budget, correction,
backlog, retargeting, scale-to-zero, and the audit trail of each decision."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from services.planner.core.perf_model import PerformanceModel
from services.planner.core.planner import Planner, planner_from_profile
from services.planner.core.settings import PlannerSettings
from services.planner.core.types import Observation, Pool, PoolState

MODEL = PerformanceModel(planner_from_profile(PlannerSettings(), "h100-llama3-70b").model.profile)
RNG = random.Random(7)
PROMPTS = tuple(RNG.randint(100, 3000) for _ in range(400))
OUTPUTS = tuple(RNG.randint(20, 600) for _ in range(400))


def observe(now: float, rate: float, prefill: int, decode: int, **kw: Any) -> Observation:
    fields: dict[str, object] = {
        "now_s": now,
        "arrivals": round(rate * 10),
        "interval_s": 10.0,
        "prompt_tokens": PROMPTS,
        "output_tokens": OUTPUTS,
        "prefix_hit_rate": 0.0,
        "pools": {"prefill": PoolState(prefill), "decode": PoolState(decode)},
    }
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def steady(
    planner: Planner,
    rate: float,
    ticks: int = 5,
    start: float = 0.0,
    counts: tuple[int, int] = (2, 2),
    **kw: Any,
) -> dict[Pool, int]:
    """What the sizing needs after ``ticks`` at ``rate``, the pools following each decision
    at once (no backlog builds)."""
    needed: dict[Pool, int] = {}
    for t in range(ticks):
        decision = planner.step(observe(start + 10.0 * (t + 1), rate, *counts, **kw))
        needed = dict(decision.needed)
        counts = (decision.desired["prefill"], decision.desired["decode"])
    return needed


def test_decision_is_sized_and_explained() -> None:
    planner = Planner(PlannerSettings(), MODEL)
    decision = planner.step(observe(10.0, 30.0, 3, 2))
    assert decision.desired["prefill"] >= 4 and decision.desired["decode"] >= 1
    assert decision.forecast_rate == pytest.approx(30.0)
    assert 0 < decision.predicted_ttft_p <= 0.5 and 0 < decision.predicted_itl_p <= 0.05
    assert "scale up prefill 3->" in decision.reason
    rejected = [a for a in decision.alternatives if a.rejected]
    assert len(rejected) == len(decision.alternatives) >= 4
    fewer = [
        a for a in decision.alternatives if a.desired["prefill"] == decision.desired["prefill"] - 1
    ]
    assert fewer and "would" in fewer[0].rejected and fewer[0].violations > 0
    assert decision.needed == decision.desired


@pytest.mark.parametrize("rate", [15.0, 40.0, 120.0])
def test_need_grows_with_load(rate: float) -> None:
    low = steady(Planner(PlannerSettings(), MODEL), rate)
    high = steady(Planner(PlannerSettings(), MODEL), rate * 2)
    assert high["prefill"] > low["prefill"] and high["decode"] >= low["decode"]


def test_tighter_targets_need_more_workers() -> None:
    planner = Planner(PlannerSettings(), MODEL)
    loose = steady(planner, 40.0)
    planner.retarget(
        dataclasses.replace(
            planner.settings, ttft_target_s=0.25, itl_target_s=0.03, percentile=0.99
        )
    )
    tight = steady(planner, 40.0, start=100.0)
    assert tight["prefill"] > loose["prefill"] and tight["decode"] > loose["decode"]


def test_budget_is_never_exceeded_and_said() -> None:
    planner = Planner(PlannerSettings(budget=5), MODEL)
    decision = planner.step(observe(10.0, 80.0, 1, 1))
    assert sum(decision.desired.values()) == 5
    assert decision.reason.startswith("budget 5")
    assert any("over the budget" in a.rejected for a in decision.alternatives)
    assert decision.needed["prefill"] + decision.needed["decode"] > 5


def test_a_backlog_asks_for_more_than_the_rate() -> None:
    calm = Planner(PlannerSettings(), MODEL).step(observe(10.0, 30.0, 3, 2))
    queued = Planner(PlannerSettings(), MODEL).step(
        observe(10.0, 30.0, 3, 2, waiting={"prefill": 900})
    )
    assert queued.desired["prefill"] > calm.desired["prefill"]
    assert queued.desired["decode"] == calm.desired["decode"]
    assert "backlog" in queued.reason


@pytest.mark.parametrize(("ratio", "bound"), [(100.0, "correction_max"), (0.01, "correction_min")])
def test_correction_follows_observed_latency_within_bounds(ratio: float, bound: str) -> None:
    settings = PlannerSettings(correction_smoothing=0.5)
    planner = Planner(settings, MODEL)
    for t in range(40):
        workload = planner.workload(20.0)
        ttft = planner.predict("prefill", workload, 4).latency_p
        itl = planner.predict("decode", workload, 2).latency_p
        planner.step(
            observe(
                10.0 * (t + 1), 20.0, 4, 2, observed_ttft_p=ttft * ratio, observed_itl_p=itl * ratio
            )
        )
    assert planner.corrections == {
        "prefill": getattr(settings, bound),
        "decode": getattr(settings, bound),
    }


def test_correction_ignores_intervals_with_a_queue() -> None:
    planner = Planner(PlannerSettings(correction_smoothing=0.5), MODEL)
    for t in range(10):
        planner.step(
            observe(10.0 * (t + 1), 20.0, 4, 2, observed_ttft_p=30.0, waiting={"prefill": 50})
        )
    assert planner.corrections["prefill"] == 1.0


def test_an_observed_slow_model_raises_the_need() -> None:
    fast = steady(Planner(PlannerSettings(), MODEL), 40.0)
    planner = Planner(PlannerSettings(correction_smoothing=1.0), MODEL)
    planner.step(observe(10.0, 40.0, fast["prefill"], fast["decode"]))  # the lengths
    workload = planner.workload(40.0)
    slow_ttft = planner.predict("prefill", workload, fast["prefill"]).latency_p * 1.8
    slow = steady(
        planner,
        40.0,
        ticks=1,
        start=10.0,
        counts=(fast["prefill"], fast["decode"]),
        observed_ttft_p=slow_ttft,
    )
    assert planner.corrections["prefill"] == pytest.approx(1.8, rel=0.01)
    assert slow["prefill"] > fast["prefill"]


def test_scale_to_zero_and_back() -> None:
    settings = PlannerSettings(scale_to_zero=True, idle_s=60.0, prefill_min=0, decode_min=0)
    planner = Planner(settings, MODEL)
    planner.step(observe(10.0, 5.0, 1, 1))
    desired = {}
    for t in range(2, 9):
        desired = dict(planner.step(observe(10.0 * t, 0.0, 1, 1)).desired)
    assert desired == {"prefill": 0, "decode": 0}
    back = planner.step(observe(90.0, 0.5, 0, 0))
    assert back.desired["prefill"] >= 1 and back.desired["decode"] >= 1


def test_no_samples_yet_still_decides() -> None:
    planner = Planner(PlannerSettings(), MODEL)
    decision = planner.step(Observation(now_s=10.0, arrivals=0, interval_s=10.0))
    assert decision.desired == {"prefill": 1, "decode": 1}
    assert math.isfinite(decision.predicted_ttft_p)


@pytest.mark.parametrize(
    "fields",
    [
        {"prefill_min": 5, "prefill_max": 2},
        {"budget": 1},
        {"percentile": 1.0},
        {"correction_min": 3.0},
        {"ttft_target_s": 0.0},
    ],
)
def test_settings_refuse_contradictions(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PlannerSettings(**fields)  # type: ignore[arg-type]
