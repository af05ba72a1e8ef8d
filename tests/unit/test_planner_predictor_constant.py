"""The constant predictor: the last interval's rate at every horizon."""

from __future__ import annotations

import pytest

from services.planner.core.predictors import make_predictor
from services.planner.core.settings import PlannerSettings


@pytest.mark.parametrize(
    ("rates", "horizon", "expected"),
    [([], 60.0, 0.0), ([5.0], 0.0, 5.0), ([5.0, 9.0, 2.0], 120.0, 2.0), ([3.0, -1.0], 10.0, 0.0)],
)
def test_constant_forecasts_the_last_rate(
    rates: list[float], horizon: float, expected: float
) -> None:
    predictor = make_predictor(PlannerSettings(predictor="constant"))
    for tick, rate in enumerate(rates):
        predictor.observe(10.0 * tick, rate)
    assert predictor.forecast(horizon) == expected
    assert predictor.peak(horizon) == expected
