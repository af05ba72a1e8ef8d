"""Conditional disaggregation, table-driven."""

from __future__ import annotations

import pytest

from services.router.core.disaggregation import DisaggregationSettings, choose_prefill

AUTO = DisaggregationSettings(mode="auto", min_uncached_tokens=512, max_prefills_per_worker=2)


@pytest.mark.parametrize(("settings", "uncached", "pool", "worker", "reason"), [
    (AUTO, 2000, {"p1": 0}, "p1", "long_prompt"),
    (AUTO, 511, {"p1": 0}, None, "short_prompt"),
    (AUTO, 512, {"p1": 0}, "p1", "long_prompt"),
    (AUTO, 2000, {}, None, "no_prefill_worker"),
    (AUTO, 2000, {"p1": 2, "p2": 2}, None, "prefill_saturated"),
    (AUTO, 2000, {"p1": 2, "p2": 1}, "p2", "long_prompt"),   # least loaded wins
    (AUTO, 2000, {"p2": 0, "p1": 0}, "p1", "long_prompt"),   # ties break by id (stable)
    (DisaggregationSettings(mode="never"), 4000, {"p1": 0}, None, "disabled"),
    (DisaggregationSettings(mode="always"), 1, {"p1": 9}, "p1", "forced"),
    (DisaggregationSettings(mode="always"), 1, {}, None, "no_prefill_worker"),
])
def test_choose_prefill(settings: DisaggregationSettings, uncached: int, pool: dict[str, int],
                        worker: str | None, reason: str) -> None:
    choice = choose_prefill(settings, uncached, pool)
    assert (choice.prefill_worker, choice.reason) == (worker, reason)
    assert choice.remote == (worker is not None)


@pytest.mark.parametrize(("bad", "message"), [
    ({"mode": "sometimes"}, "mode: 'sometimes' is not one of auto, always, never"),
    ({"min_uncached_tokens": -1}, r"min_uncached_tokens: must be >= 0 \(got -1\)"),
    ({"max_prefills_per_worker": 0}, r"max_prefills_per_worker: must be >= 1 \(got 0\)"),
])
def test_bad_settings_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DisaggregationSettings(**bad)  # type: ignore[arg-type]
