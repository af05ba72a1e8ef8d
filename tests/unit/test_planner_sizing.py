"""Per-pool sizing on the H100 profile: the fewest workers meeting a percentile target."""

from __future__ import annotations

import math

import pytest

from services.planner.core.perf_model import PerformanceModel
from services.planner.core.sizing import (
    PoolPrediction,
    Workload,
    capacity,
    fewest,
    predict_decode,
    predict_prefill,
)
from tandem.engines.mock.perf import load_profile

MODEL = PerformanceModel(load_profile("h100-llama3-70b"))
PROMPTS = [200, 500, 1000, 1000, 2000, 4000]
OUTPUTS = [50, 100, 200, 200, 400, 800]


def workload(rate: float, hit: float = 0.0, prompts: list[int] = PROMPTS) -> Workload:
    return Workload.from_samples(rate, prompts, OUTPUTS, hit, MODEL)


def prefill_need(rate: float, target: float = 0.5, q: float = 0.99, **kw: object) -> int:
    load = workload(rate, **kw)  # type: ignore[arg-type]
    return fewest(lambda n: predict_prefill(load, n, MODEL, target, q, latency=False), 1, 64, 1 - q)


def test_prefill_time_follows_the_profile() -> None:
    p = MODEL.profile
    expected = p.step_overhead_s + p.prefill_token_s * 1000 + p.prefill_attention_s * 1000 * 500
    assert MODEL.prefill_s(1000) == pytest.approx(expected)
    assert MODEL.prefill_s(10000) > 2 * MODEL.prefill_s(5000) - 1e-9  # attention is quadratic
    assert MODEL.prefill_s(1000, cached=3000) > MODEL.prefill_s(1000)  # attends to the cache


@pytest.mark.parametrize("rate", [5.0, 20.0, 60.0, 150.0])
def test_prefill_need_covers_the_load_with_queueing_headroom(rate: float) -> None:
    need = prefill_need(rate)
    mean = workload(rate).prefill_mean
    assert need >= math.ceil(rate * mean)  # at least utilisation < 1
    load = workload(rate)
    assert predict_prefill(load, need, MODEL, 0.5, 0.99).miss <= 0.01
    if need > 1:
        assert predict_prefill(load, need - 1, MODEL, 0.5, 0.99).miss > 0.01


def test_tail_of_the_prompt_distribution_drives_the_need_not_its_mean() -> None:
    """Same mean prompt, one with a long tail: the tail needs more workers at p99."""
    even = [1200] * 6
    skewed = [200, 200, 200, 200, 200, 6200]
    assert sum(even) == sum(skewed)
    assert prefill_need(30.0, target=0.6, prompts=skewed) > prefill_need(
        30.0, target=0.6, prompts=even
    )


def test_prefix_hits_lower_the_need() -> None:
    assert prefill_need(60.0, hit=0.7) < prefill_need(60.0)


def test_prefill_percentile_rises_with_load() -> None:
    latencies = [
        predict_prefill(workload(rate), 4, MODEL, 0.5, 0.9).latency_p for rate in (5.0, 20.0, 35.0)
    ]
    assert latencies == sorted(latencies) and latencies[-1] > 1.5 * latencies[0]
    assert math.isnan(predict_prefill(workload(5.0), 4, MODEL, 0.5, 0.9, latency=False).latency_p)


def test_decode_need_and_capacity() -> None:
    load = workload(40.0)
    results = {n: predict_decode(load, n, MODEL, 0.05, 0.99) for n in (1, 2, 3, 8)}
    assert results[1].miss == 1.0 and results[1].latency_p == math.inf
    assert results[8].miss < 1e-6 and results[8].latency_p < 0.05
    assert results[2].latency_p > results[3].latency_p > results[8].latency_p
    served = capacity("decode", load, 1, MODEL)
    assert predict_decode(workload(0.95 * served), 1, MODEL, 1.0, 0.5).utilisation < 1.0
    assert capacity("prefill", load, 3, MODEL) == pytest.approx(3 / load.prefill_mean)


def test_correction_scales_the_model() -> None:
    load = workload(20.0)
    slow = predict_prefill(load, 3, MODEL, 0.5, 0.9, correction=1.5)
    fast = predict_prefill(load, 3, MODEL, 0.5, 0.9)
    assert slow.latency_p > fast.latency_p and slow.utilisation == pytest.approx(
        1.5 * fast.utilisation
    )


@pytest.mark.parametrize(
    ("misses", "low", "high", "expected"),
    [
        ([1.0, 0.5, 0.02, 0.001, 0.0], 0, 4, 3),
        ([1.0, 0.5, 0.02, 0.001, 0.0], 3, 4, 3),
        ([1.0, 1.0, 1.0], 0, 2, 2),  # none is enough: the most allowed
        ([0.0, 0.0], 0, 1, 0),
    ],
)
def test_fewest(misses: list[float], low: int, high: int, expected: int) -> None:
    def predict(n: int) -> PoolPrediction:
        return PoolPrediction(n, misses[n], 0.0, 0.0)

    assert fewest(predict, low, high, 0.01) == expected


def test_a_fixed_profile_without_per_sequence_cost() -> None:
    """The mock engine without --mock-profile: fixed per-token prefill and per-step decode."""
    from tandem.engines.mock.perf import fixed_profile

    model = PerformanceModel(fixed_profile(0.0005, 0.02))
    load = Workload.from_samples(1.0, PROMPTS, OUTPUTS, 0.0, model)
    decode = predict_decode(load, 1, model, 0.05, 0.9)
    assert decode.miss < 0.01 and decode.latency_p == pytest.approx(0.02)
    assert predict_decode(load, 1, model, 0.01, 0.9).miss == 1.0  # a step is 20 ms
    assert capacity("decode", load, 2, model) > 0
    assert predict_prefill(load, 2, model, 3.0, 0.9).miss < 0.01
    empty = PerformanceModel(fixed_profile(0.0, 0.0))
    idle = Workload.from_samples(10.0, PROMPTS, OUTPUTS, 0.0, empty)
    assert capacity("prefill", idle, 1, empty) == math.inf
    assert predict_decode(idle, 1, empty, 0.05, 0.9).miss == 0.0
