"""The moving-average predictor: the mean rate of the window."""

from __future__ import annotations

import pytest

from services.planner.core.predictors import make_predictor
from services.planner.core.settings import PlannerSettings


@pytest.mark.parametrize(
    ("window", "rates", "expected"),
    [
        (300.0, [], 0.0),
        (300.0, [2.0, 4.0, 6.0], 4.0),
        (25.0, [100.0, 2.0, 4.0, 6.0], 4.0),  # 10 s ticks: the first is older than 25 s
    ],
)
def test_moving_average_over_the_window(window: float, rates: list[float], expected: float) -> None:
    predictor = make_predictor(
        PlannerSettings(predictor="moving_average", predictor_window_s=window)
    )
    for tick, rate in enumerate(rates):
        predictor.observe(10.0 * tick, rate)
    assert predictor.forecast(60.0) == pytest.approx(expected)
