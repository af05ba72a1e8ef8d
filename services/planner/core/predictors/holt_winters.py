"""The ``holt_winters`` predictor: exponential smoothing of the level and the trend (Holt's
linear method), with an additive season when ``season_s`` is set (Holt-Winters)."""

from __future__ import annotations

from services.planner.core.predictors.base import Predictor
from services.planner.core.settings import PlannerSettings


class HoltWintersPredictor(Predictor):
    """level + trend · horizon (+ the season's offset at the horizon), never below 0."""

    name = "holt_winters"

    def __init__(
        self, alpha: float, beta: float, gamma: float = 0.0, season_s: float | None = None
    ) -> None:
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.season_s = season_s
        self.level: float | None = None
        self.trend = 0.0  # rate change per second
        self.last_s = 0.0
        self.step_s = 0.0
        self.season: list[float] = []

    @classmethod
    def build(cls, settings: PlannerSettings) -> Predictor:
        return cls(
            settings.smoothing,
            settings.trend_smoothing,
            settings.season_smoothing,
            settings.season_s,
        )

    def _slot(self, at_s: float) -> int | None:
        if not self.season:
            return None
        return int(at_s / self.step_s) % len(self.season)

    def observe(self, now_s: float, rate: float) -> None:
        if self.level is None:
            self.level, self.last_s = rate, now_s
            return
        step = now_s - self.last_s
        if step <= 0:
            return
        if self.season_s and not self.season:
            self.step_s = step
            self.season = [0.0] * max(1, round(self.season_s / step))
        slot = self._slot(now_s)
        offset = self.season[slot] if slot is not None else 0.0
        previous = self.level
        self.level = self.alpha * (rate - offset) + (1 - self.alpha) * (
            previous + self.trend * step
        )
        self.trend = self.beta * (self.level - previous) / step + (1 - self.beta) * self.trend
        if slot is not None:
            self.season[slot] = self.gamma * (rate - self.level) + (1 - self.gamma) * offset
        self.last_s = now_s

    def forecast(self, horizon_s: float) -> float:
        if self.level is None:
            return 0.0
        slot = self._slot(self.last_s + horizon_s)
        offset = self.season[slot] if slot is not None else 0.0
        return max(self.level + self.trend * horizon_s + offset, 0.0)
