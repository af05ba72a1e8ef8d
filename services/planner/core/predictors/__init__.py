"""Load predictors behind one interface (``Predictor.observe``/``forecast``), registered by
name in ``PREDICTORS``; ``make_predictor`` builds one."""

from __future__ import annotations

from services.planner.core.predictors.base import Predictor
from services.planner.core.predictors.constant import ConstantPredictor
from services.planner.core.predictors.holt_winters import HoltWintersPredictor
from services.planner.core.predictors.moving_average import MovingAveragePredictor
from services.planner.core.predictors.quantile import QuantilePredictor
from services.planner.core.settings import PlannerSettings

PREDICTORS: dict[str, type[Predictor]] = {
    ConstantPredictor.name: ConstantPredictor,
    MovingAveragePredictor.name: MovingAveragePredictor,
    HoltWintersPredictor.name: HoltWintersPredictor,
    QuantilePredictor.name: QuantilePredictor,
}
"""Every predictor by its ``--predictor`` name; a new predictor is one file and one entry."""


def make_predictor(settings: PlannerSettings, name: str | None = None) -> Predictor:
    """The predictor called ``name`` (default: ``settings.predictor``)."""
    predictor = PREDICTORS.get(name or settings.predictor)
    if predictor is None:
        raise ValueError(f"unknown predictor {name or settings.predictor!r}")
    return predictor.build(settings)


__all__ = [
    "PREDICTORS",
    "ConstantPredictor",
    "HoltWintersPredictor",
    "MovingAveragePredictor",
    "Predictor",
    "QuantilePredictor",
    "make_predictor",
]
