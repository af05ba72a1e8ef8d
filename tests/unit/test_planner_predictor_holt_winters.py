"""The Holt-Winters predictor: level and trend; a season when configured."""

from __future__ import annotations

import math

import pytest

from services.planner.core.predictors import make_predictor
from services.planner.core.settings import PlannerSettings


def test_holt_follows_a_linear_ramp_ahead() -> None:
    predictor = make_predictor(
        PlannerSettings(predictor="holt_winters", smoothing=0.5, trend_smoothing=0.3)
    )
    for tick in range(200):
        predictor.observe(10.0 * tick, 10.0 + 0.1 * tick)  # +0.01 req/s per second
    last = 10.0 + 0.1 * 199
    assert predictor.forecast(0.0) == pytest.approx(last, rel=0.01)
    assert predictor.forecast(100.0) == pytest.approx(last + 1.0, rel=0.01)


def test_holt_never_forecasts_below_zero() -> None:
    predictor = make_predictor(PlannerSettings(predictor="holt_winters", trend_smoothing=0.5))
    for tick in range(20):
        predictor.observe(10.0 * tick, 50.0 - 2.0 * tick)  # falls 0.2 req/s per second
    assert predictor.forecast(600.0) == 0.0


def test_season_is_learned() -> None:
    settings = PlannerSettings(
        predictor="holt_winters",
        smoothing=0.2,
        trend_smoothing=0.0,
        season_s=100.0,
        season_smoothing=0.5,
    )
    predictor = make_predictor(settings)

    def rate(t: float) -> float:
        return 20.0 + 10.0 * math.sin(2 * math.pi * t / 100.0)

    for tick in range(400):
        predictor.observe(10.0 * tick, rate(10.0 * tick))
    now = 10.0 * 399
    for horizon in (10.0, 30.0, 50.0):
        assert predictor.forecast(horizon) == pytest.approx(rate(now + horizon), abs=1.5)
    without = make_predictor(dataclass_replace(settings))
    for tick in range(400):
        without.observe(10.0 * tick, rate(10.0 * tick))
    assert abs(without.forecast(30.0) - rate(now + 30.0)) > 3.0


def dataclass_replace(settings: PlannerSettings) -> PlannerSettings:
    import dataclasses

    return dataclasses.replace(settings, season_s=None)
