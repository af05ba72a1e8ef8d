"""Settings of the planner's decisions. Frozen: to change the targets at run time, build a new
object (``dataclasses.replace`` checks the limits again) and give it to ``Planner.retarget``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from tandem.service.settings import Settings

PredictorName = Literal["constant", "moving_average", "holt_winters", "quantile"]
"""The load predictors of the registry (``predictors.PREDICTORS``; a test keeps them equal)."""
Seconds = Annotated[float, Gt(0)]
Workers = Annotated[int, Ge(0)]
Fraction = Annotated[float, Interval(gt=0, lt=1)]


@dataclasses.dataclass(frozen=True)
class PlannerSettings(Settings):
    """Latency targets, limits and scaling rules of the planner."""

    ttft_target_s: Seconds = 0.5
    """Target time to first token, seconds, at the target percentile."""
    itl_target_s: Seconds = 0.05
    """Target inter-token latency (a request's mean gap between tokens), seconds, at the target
    percentile."""
    percentile: Fraction = 0.9
    """The share of requests that must meet both targets (0.9: p90)."""
    interval_s: Seconds = 10.0
    """Seconds between two planner ticks."""
    budget: Annotated[int, Ge(1)] | None = None
    """Most workers of both pools together; unset: no budget."""
    prefill_min: Workers = 1
    """Fewest prefill workers (unless scale-to-zero applies)."""
    prefill_max: Workers = 64
    """Most prefill workers."""
    decode_min: Workers = 1
    """Fewest decode workers (unless scale-to-zero applies)."""
    decode_max: Workers = 64
    """Most decode workers."""
    startup_s: Annotated[float, Ge(0)] = 120.0
    """Seconds from asking for a worker to its serving (the measured start-up time): the
    planner sizes for the load forecast this far ahead, plus one interval."""
    backlog_drain_s: Seconds = 60.0
    """A queue that has built up (``Observation.waiting``, plus what the ready workers cannot
    serve until new ones start) is sized to drain within this many seconds."""
    scale_down_delay_s: Annotated[float, Ge(0)] = 300.0
    """A pool shrinks only to the largest count it needed over this many past seconds."""
    scale_down_margin: Annotated[float, Ge(0)] = 0.1
    """A pool shrinks only to a count that meets the targets at this much more load (0.1: 10%
    above the forecast): the hysteresis band between adding and removing a worker."""
    scale_down_step: Annotated[int, Ge(1)] = 1
    """Most workers a pool drains in one tick."""
    min_lifetime_s: Annotated[float, Ge(0)] = 300.0
    """A pool does not shrink within this many seconds of its last growth (a worker lives at
    least this long)."""
    scale_to_zero: bool = False
    """Let both pools go to zero workers after ``idle_s`` without a request (the first request
    then waits for a worker); off: the pools keep their minimum."""
    idle_s: Seconds = 300.0
    """Seconds without any request before scale-to-zero empties the pools."""
    predictor: PredictorName = "quantile"
    """Load forecast: constant (last interval), moving_average, holt_winters (level and
    trend), quantile (an upper quantile of recent rates plus the trend)."""
    predictor_window_s: Seconds = 300.0
    """Seconds of past load the moving-average and quantile predictors look at."""
    predictor_quantile: Fraction = 0.9
    """Quantile of the recent per-interval rates the quantile predictor forecasts."""
    predictor_trend: bool = False
    """The quantile predictor adds Holt's (rising) trend over the horizon: earlier on a slow
    ramp, but an overshoot of minutes after a step."""
    smoothing: Annotated[float, Interval(gt=0, le=1)] = 0.3
    """Holt-Winters' level smoothing (alpha)."""
    trend_smoothing: Annotated[float, Interval(ge=0, le=1)] = 0.1
    """Holt-Winters' trend smoothing (beta); the quantile predictor's trend uses it too."""
    season_s: Seconds | None = None
    """Holt-Winters' season length, seconds (e.g. 86400 for a daily cycle); unset: no season."""
    season_smoothing: Annotated[float, Interval(ge=0, le=1)] = 0.1
    """Holt-Winters' season smoothing (gamma)."""
    samples: Annotated[int, Ge(16)] = 2048
    """Most prompt/output length samples kept for the sizing (the latest ones)."""
    handoff_s: Annotated[float, Ge(0)] = 0.0
    """Seconds added to every TTFT outside the workers (routing, KV hand-off to decode)."""
    correction_min: Annotated[float, Gt(0)] = 0.5
    """Lowest online correction of the performance model (observed/predicted latency)."""
    correction_max: Annotated[float, Gt(0)] = 2.0
    """Highest online correction of the performance model."""
    correction_smoothing: Annotated[float, Interval(ge=0, le=1)] = 0.2
    """Weight of one interval's observed/predicted ratio in the correction (0: no correction)."""
    correction_min_arrivals: Annotated[int, Ge(1)] = 20
    """The correction learns only from intervals with at least this many requests."""
    correction_max_load: Fraction = 0.8
    """The correction learns only from intervals whose pool ran below this utilisation (near
    saturation the queueing term, not the model, dominates the error)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefill_min > self.prefill_max or self.decode_min > self.decode_max:
            raise ValueError("a pool's minimum exceeds its maximum")
        if self.correction_min > self.correction_max:
            raise ValueError("correction_min exceeds correction_max")
        if self.budget is not None and self.prefill_min + self.decode_min > self.budget:
            raise ValueError("the pools' minimums exceed the budget")

    def limits(self, pool: str) -> tuple[int, int]:
        """(min, max) workers of ``pool``."""
        if pool == "prefill":
            return self.prefill_min, self.prefill_max
        return self.decode_min, self.decode_max
