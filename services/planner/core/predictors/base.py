"""The load predictor interface: fed one rate per tick, forecasts the rate ahead."""

from __future__ import annotations

import abc
from typing import ClassVar

from services.planner.core.settings import PlannerSettings


class Predictor(abc.ABC):
    """Forecasts the request rate (requests per second) from the rates of past intervals."""

    name: ClassVar[str]
    """The ``--predictor`` name (a key of ``PREDICTORS``)."""

    @classmethod
    def build(cls, settings: PlannerSettings) -> Predictor:
        """A predictor configured by ``settings``."""
        return cls()

    @abc.abstractmethod
    def observe(self, now_s: float, rate: float) -> None:
        """The rate of the interval ending at ``now_s``."""

    @abc.abstractmethod
    def forecast(self, horizon_s: float) -> float:
        """The rate expected ``horizon_s`` seconds after the last observation (>= 0)."""

    def peak(self, horizon_s: float) -> float:
        """The highest rate expected between now and ``horizon_s`` ahead (the planner sizes
        for it). Forecasts are linear in the horizon, so the ends bound it."""
        return max(self.forecast(0.0), self.forecast(horizon_s))
