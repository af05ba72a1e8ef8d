"""The ``quantile`` predictor: an upper quantile of the recent per-interval rates, not their
mean, raised by a rising trend over the horizon. It plans for the bursts of the window (and at
once for a rate above them), the way a percentile target needs; a falling trend never lowers
it (scale-down is the rules' job). The trend is off by default (``predictor_trend``): after a
step, Holt's trend reads the jump as a slope and overshoots for minutes."""

from __future__ import annotations

import math

from services.planner.core.predictors.base import Predictor
from services.planner.core.predictors.holt_winters import HoltWintersPredictor
from services.planner.core.predictors.window import RateWindow
from services.planner.core.settings import PlannerSettings


class QuantilePredictor(Predictor):
    """max(last rate, the ``quantile`` of the window's rates) [+ max(0, trend) · horizon]."""

    name = "quantile"

    def __init__(
        self, window_s: float, quantile: float, trend: HoltWintersPredictor | None = None
    ) -> None:
        self.window = RateWindow(window_s)
        self.quantile = quantile
        self.trend = trend

    @classmethod
    def build(cls, settings: PlannerSettings) -> Predictor:
        trend = None
        if settings.predictor_trend:
            trend = HoltWintersPredictor(settings.smoothing, settings.trend_smoothing)
        return cls(settings.predictor_window_s, settings.predictor_quantile, trend)

    def observe(self, now_s: float, rate: float) -> None:
        self.window.add(now_s, rate)
        if self.trend is not None:
            self.trend.observe(now_s, rate)

    def upper(self) -> float:
        """The window's ``quantile`` rate (nearest rank, upper)."""
        rates = sorted(self.window.rates())
        if not rates:
            return 0.0
        return rates[min(len(rates) - 1, math.ceil(self.quantile * len(rates)) - 1)]

    def forecast(self, horizon_s: float) -> float:
        base = max(self.window.last, self.upper())
        rising = max(self.trend.trend, 0.0) if self.trend is not None else 0.0
        return base + rising * horizon_s
