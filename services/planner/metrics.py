"""The planner's metrics (``tandem_planner_*``): per pool, the workers wanted and had (by
state); the load observed and forecast; TTFT and ITL predicted, observed and targeted; the
model's online correction; decisions by direction. Gauges read the latest decision when
Prometheus scrapes (the observed latencies: of the latest interval that had requests; a
prediction over capacity, infinite, is left out); the instruments exist once per process
(``planner_metrics``)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation

from services.planner.core.types import Pool, PoolState
from tandem.telemetry import meter

SCOPE = "tandem.planner"


@dataclasses.dataclass
class Latest:
    """What the gauges report: the latest decision's figures."""

    desired: Mapping[Pool, int] = dataclasses.field(default_factory=dict)
    pools: Mapping[Pool, PoolState] = dataclasses.field(default_factory=dict)
    corrections: Mapping[Pool, float] = dataclasses.field(default_factory=dict)
    observed_rate: float | None = None
    forecast_rate: float | None = None
    predicted_ttft_s: float | None = None
    predicted_itl_s: float | None = None
    observed_ttft_s: float | None = None
    observed_itl_s: float | None = None
    target_ttft_s: float | None = None
    target_itl_s: float | None = None
    startup_s: float | None = None


@dataclasses.dataclass(frozen=True)
class ScalarGauge:
    """A gauge of one figure of the latest decision (``Latest.<field>``); the dashboard test
    finds the names by this class's calls."""

    name: str
    unit: str
    description: str
    field: str


SCALAR_GAUGES = (
    ScalarGauge("tandem.planner.observed_rate", unit="{request}/s",
                description="Requests per second over the last interval",
                field="observed_rate"),
    ScalarGauge("tandem.planner.forecast_rate", unit="{request}/s",
                description="Requests per second the sizing was for (forecast over the lead "
                            "time)", field="forecast_rate"),
    ScalarGauge("tandem.planner.predicted_ttft", unit="s",
                description="Predicted TTFT at the target percentile for the desired pools",
                field="predicted_ttft_s"),
    ScalarGauge("tandem.planner.predicted_itl", unit="s",
                description="Predicted inter-token latency at the target percentile",
                field="predicted_itl_s"),
    ScalarGauge("tandem.planner.observed_ttft", unit="s",
                description="Observed TTFT at the target percentile over the last interval",
                field="observed_ttft_s"),
    ScalarGauge("tandem.planner.observed_itl", unit="s",
                description="Observed inter-token latency at the target percentile",
                field="observed_itl_s"),
    ScalarGauge("tandem.planner.target_ttft", unit="s", description="The TTFT target",
                field="target_ttft_s"),
    ScalarGauge("tandem.planner.target_itl", unit="s",
                description="The inter-token latency target", field="target_itl_s"),
    ScalarGauge("tandem.planner.startup", unit="s",
                description="The lead time planned with: a worker's start-up, measured",
                field="startup_s"),
)
"""The figures of the latest decision, one gauge each."""


class PlannerMetrics:
    """The instruments, reading ``latest``."""

    def __init__(self) -> None:
        self.latest = Latest()
        m = meter(SCOPE)
        m.create_observable_gauge(
            "tandem.planner.desired_workers", unit="{worker}",
            description="Workers the latest decision wants per pool (tandem.pool)",
            callbacks=[self._desired])
        m.create_observable_gauge(
            "tandem.planner.workers", unit="{worker}",
            description="Workers per pool (tandem.pool) and state (tandem.state: ready, "
                       "starting, draining) as the connector reported them",
            callbacks=[self._workers])
        m.create_observable_gauge(
            "tandem.planner.model_correction", unit="1",
            description="Online correction of the performance model per pool "
                       "(observed/predicted latency, bounded)",
            callbacks=[self._corrections])
        for gauge in SCALAR_GAUGES:
            m.create_observable_gauge(gauge.name, unit=gauge.unit,
                                     description=gauge.description,
                                     callbacks=[self._scalar(gauge.field)])
        self.decisions = m.create_counter(
            "tandem.planner.decisions", unit="{decision}",
            description="Decisions by tandem.direction: up (a pool grows), down (a pool "
                       "drains), hold")

    def _desired(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, {"tandem.pool": pool})
                for pool, count in self.latest.desired.items()]

    def _workers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(getattr(state, kind), {"tandem.pool": pool, "tandem.state": kind})
                for pool, state in self.latest.pools.items()
                for kind in ("ready", "starting", "draining")]

    def _corrections(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {"tandem.pool": pool})
                for pool, value in self.latest.corrections.items()]

    def _scalar(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            value = getattr(self.latest, field)
            if value is None or not math.isfinite(value):
                return []  # no decision yet, or a prediction over capacity (the SDK drops it)
            return [Observation(value)]
        return observe


@functools.cache
def planner_metrics() -> PlannerMetrics:
    """The process's planner instruments (made on first use)."""
    return PlannerMetrics()
