"""The quantile predictor: an upper quantile of the window's rates, at once above it when the
last rate is, and optionally raised by a rising trend."""

from __future__ import annotations

import random

import pytest

from services.planner.core.predictors import make_predictor
from services.planner.core.settings import PlannerSettings


def test_forecasts_the_upper_quantile_not_the_mean() -> None:
    predictor = make_predictor(PlannerSettings(predictor="quantile", predictor_quantile=0.9))
    rng = random.Random(1)
    rates = [rng.uniform(10.0, 20.0) for _ in range(30)]
    for tick, rate in enumerate(rates):
        predictor.observe(10.0 * tick, rate)
    ranked = sorted(rates)
    forecast = predictor.forecast(120.0)
    assert forecast >= ranked[26] and forecast > sum(rates) / len(rates) + 2.0


@pytest.mark.parametrize(("rates", "expected"), [([5.0] * 10 + [50.0], 50.0), ([], 0.0)])
def test_jumps_with_the_last_rate(rates: list[float], expected: float) -> None:
    predictor = make_predictor(PlannerSettings(predictor="quantile"))
    for tick, rate in enumerate(rates):
        predictor.observe(10.0 * tick, rate)
    assert predictor.forecast(0.0) == expected


def test_a_falling_load_keeps_the_window_peak() -> None:
    predictor = make_predictor(
        PlannerSettings(predictor="quantile", predictor_window_s=300.0, predictor_trend=True)
    )
    for tick in range(30):
        predictor.observe(10.0 * tick, 40.0 - tick)
    assert predictor.forecast(180.0) >= 37.0


def test_trend_only_when_asked() -> None:
    ramp = [10.0 + 0.2 * tick for tick in range(60)]
    forecasts = {}
    for trend in (False, True):
        predictor = make_predictor(PlannerSettings(predictor="quantile", predictor_trend=trend))
        for tick, rate in enumerate(ramp):
            predictor.observe(10.0 * tick, rate)
        forecasts[trend] = predictor.forecast(180.0)
    assert forecasts[False] == pytest.approx(ramp[-1])
    assert forecasts[True] > ramp[-1] + 2.0
