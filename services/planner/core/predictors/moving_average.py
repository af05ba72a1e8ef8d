"""The ``moving_average`` predictor: the mean rate of the last ``predictor_window_s``."""

from __future__ import annotations

from services.planner.core.predictors.base import Predictor
from services.planner.core.predictors.window import RateWindow
from services.planner.core.settings import PlannerSettings


class MovingAveragePredictor(Predictor):
    """Forecasts the window's mean rate at every horizon."""

    name = "moving_average"

    def __init__(self, window_s: float) -> None:
        self.window = RateWindow(window_s)

    @classmethod
    def build(cls, settings: PlannerSettings) -> Predictor:
        return cls(settings.predictor_window_s)

    def observe(self, now_s: float, rate: float) -> None:
        self.window.add(now_s, rate)

    def forecast(self, horizon_s: float) -> float:
        rates = self.window.rates()
        return sum(rates) / len(rates) if rates else 0.0
