"""The ``constant`` predictor: the next interval looks like the last one."""

from __future__ import annotations

from services.planner.core.predictors.base import Predictor


class ConstantPredictor(Predictor):
    """Forecasts the last observed rate at every horizon."""

    name = "constant"

    def __init__(self) -> None:
        self.last = 0.0

    def observe(self, now_s: float, rate: float) -> None:
        self.last = max(rate, 0.0)

    def forecast(self, horizon_s: float) -> float:
        return self.last
