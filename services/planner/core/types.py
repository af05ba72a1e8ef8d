"""The planner's inputs and outputs: one tick's observation of the pools and the decision."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

Pool = Literal["prefill", "decode"]
"""A worker pool the planner sizes."""
POOLS: tuple[Pool, ...] = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class PoolState:
    """Workers of one pool as the connector reports them."""

    ready: int
    """Serving."""
    starting: int = 0
    """Asked for, not serving yet (a scale-up is pending while this is above 0)."""
    draining: int = 0
    """Finishing their in-flight requests before they stop; they take no new ones."""

    @property
    def provisioned(self) -> int:
        """Workers that are serving or will be: ready + starting."""
        return self.ready + self.starting


@dataclasses.dataclass(frozen=True)
class Observation:
    """One planner tick's inputs, from the metrics of the interval that just ended."""

    now_s: float
    """Time of the tick, seconds (any monotonic origin)."""
    arrivals: int
    """Requests that arrived since the previous tick (all of them, served or still queued)."""
    interval_s: float
    """Seconds since the previous tick."""
    prompt_tokens: tuple[int, ...] = ()
    """Samples of the prompt lengths of this interval's requests (empty: keep the last ones)."""
    output_tokens: tuple[int, ...] = ()
    """Samples of the output lengths (max_tokens or generated) of this interval's requests."""
    prefix_hit_rate: float = 0.0
    """Share of prompt tokens found in a prefix cache (0-1)."""
    observed_ttft_p: float | None = None
    """The target percentile of the TTFT seen this interval, seconds (None: no sample)."""
    observed_itl_p: float | None = None
    """The target percentile of the inter-token latency seen this interval, seconds."""
    pools: Mapping[Pool, PoolState] = dataclasses.field(default_factory=dict)
    """Workers per pool now."""
    waiting: Mapping[Pool, int] = dataclasses.field(default_factory=dict)
    """Requests queued per pool, not started yet (vLLM's num_requests_waiting summed over the
    pool's workers, plus requests held for a pool without workers); missing: 0."""

    @property
    def rate(self) -> float:
        """Arrivals per second over the interval."""
        return self.arrivals / self.interval_s if self.interval_s > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Alternative:
    """An allocation the planner considered, with what it predicts and why it was not taken
    (empty ``rejected`` for the chosen one)."""

    desired: Mapping[Pool, int]
    predicted_ttft_p: float
    """Predicted target percentile of TTFT at the forecast load, seconds (inf: unstable)."""
    predicted_itl_p: float
    """Predicted target percentile of the inter-token latency, seconds (inf: over capacity)."""
    violations: float
    """Predicted requests per second that miss a target."""
    rejected: str = ""
    """Why it was not chosen ("" for the decision itself)."""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Worker counts the planner wants now, and the why."""

    desired: Mapping[Pool, int]
    """Workers wanted per pool (ready + starting, after this decision)."""
    reason: str
    """Short reason, e.g. "scale up prefill: forecast 41.2 req/s at +120 s"."""
    forecast_rate: float
    """Requests per second the sizing was for (the forecast over the lead time)."""
    predicted_ttft_p: float
    """Predicted target percentile of TTFT for ``desired`` at ``forecast_rate``, seconds."""
    predicted_itl_p: float
    """Predicted target percentile of the inter-token latency, seconds."""
    alternatives: tuple[Alternative, ...] = ()
    """What else was considered (one more and one fewer worker per pool, the unconstrained
    need under a budget) and why each was rejected."""
    corrections: Mapping[Pool, float] = dataclasses.field(default_factory=dict)
    """Online correction factor of the performance model per pool (observed/predicted,
    bounded)."""
    needed: Mapping[Pool, int] = dataclasses.field(default_factory=dict)
    """Workers the sizing alone asks for (before hysteresis, lifetime and budget rules)."""
