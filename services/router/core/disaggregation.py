"""Conditional disaggregation: whether a request's prompt is prefilled on a prefill worker or
on its decode worker. Pure: the router passes what it knows, the answer carries its reason."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Literal

from annotated_types import Ge

from tandem.service.settings import Settings

DisaggregationMode = Literal["auto", "always", "never"]


@dataclasses.dataclass(frozen=True)
class DisaggregationSettings(Settings):
    """When a prefill worker computes the prompt instead of the decode worker."""

    mode: DisaggregationMode = "auto"
    """"auto": remote prefill when it pays (rules below); "always": whenever a prefill worker
    is live; "never": every decode worker prefills its own prompts."""
    min_uncached_tokens: Annotated[int, Ge(0)] = 512
    """Remote prefill only when at least this many prompt tokens are not cached (on the decode
    worker's device or in the KV store): shorter prefills cost less than the hand-off."""
    max_prefills_per_worker: Annotated[int, Ge(1)] = 4
    """The prefill pool is saturated when every prefill worker has this many prefills in
    flight; the decode worker then prefills locally rather than queueing behind them."""


@dataclasses.dataclass(frozen=True)
class PrefillChoice:
    """The outcome: a prefill worker (or None for local prefill) and why."""

    prefill_worker: str | None
    reason: str
    """disabled, no_prefill_worker, short_prompt, prefill_saturated, forced, long_prompt, or
    fallback (a remote prefill failed and the decode worker prefilled instead)."""

    @property
    def remote(self) -> bool:
        return self.prefill_worker is not None


def choose_prefill(settings: DisaggregationSettings, uncached_tokens: int,
                   prefills_in_flight: Mapping[str, int]) -> PrefillChoice:
    """``prefills_in_flight``: every live prefill worker and the prefills the router has in
    flight on it; the least loaded one is chosen."""
    if settings.mode == "never":
        return PrefillChoice(None, "disabled")
    if not prefills_in_flight:
        return PrefillChoice(None, "no_prefill_worker")
    worker, in_flight = min(prefills_in_flight.items(), key=lambda item: (item[1], item[0]))
    if settings.mode == "always":
        return PrefillChoice(worker, "forced")
    if uncached_tokens < settings.min_uncached_tokens:
        return PrefillChoice(None, "short_prompt")
    if in_flight >= settings.max_prefills_per_worker:
        return PrefillChoice(None, "prefill_saturated")
    return PrefillChoice(worker, "long_prompt")
