"""The predictor registry matches the settings' choices."""

from __future__ import annotations

import typing

import pytest

from services.planner.core.predictors import PREDICTORS, make_predictor
from services.planner.core.settings import PlannerSettings, PredictorName


def test_registry_matches_the_settings_choices() -> None:
    assert set(PREDICTORS) == set(typing.get_args(PredictorName))
    for name in PREDICTORS:
        assert make_predictor(PlannerSettings(predictor=name)).name == name  # type: ignore[arg-type]


def test_unknown_predictor_is_refused() -> None:
    with pytest.raises(ValueError, match="predictor"):
        PlannerSettings(predictor="arima")  # type: ignore[arg-type]
