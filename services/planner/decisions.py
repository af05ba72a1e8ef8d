"""Every decision, auditable: its inputs (the observation), the forecast, the predicted
percentiles, the alternatives considered and the reason, recorded four ways at once: a span
(``planner.decide``), the metrics (``metrics.py``), an entry of the Redis stream
``<ns>:planner:decisions`` (field ``plan``: the JSON below) and a message to every
``WatchPlans`` call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict

from services.planner.core.settings import PlannerSettings
from services.planner.core.types import POOLS, Decision, Observation
from services.planner.metrics import Latest, PlannerMetrics
from tandem.telemetry import tracer
from tandem.v1 import planner_pb2

log = logging.getLogger(__name__)
_tracer = tracer("tandem.planner")


def stream_key(namespace: str) -> str:
    return f"{namespace}:planner:decisions"


def _ms(seconds: float | None) -> float:
    """Seconds as milliseconds for a message (0: none; a large finite number for inf)."""
    if seconds is None:
        return 0.0
    return 1e12 if math.isinf(seconds) else seconds * 1000


def _held(value: float | None, previous: float | None) -> float | None:
    """An interval without samples keeps the latest observed value."""
    return previous if value is None else value


def targets_message(settings: PlannerSettings) -> planner_pb2.ServiceLevelObjective:
    return planner_pb2.ServiceLevelObjective(ttft_ms=settings.ttft_target_s * 1000,
                                             itl_ms=settings.itl_target_s * 1000,
                                             percentile=settings.percentile)


def direction(decision: Decision, observation: Observation) -> str:
    """"up" when a pool grows, "down" when one shrinks (and none grows), else "hold"."""
    changes = [decision.desired.get(pool, 0) - (observation.pools[pool].provisioned
                                                if pool in observation.pools else 0)
               for pool in POOLS]
    if any(change > 0 for change in changes):
        return "up"
    return "down" if any(change < 0 for change in changes) else "hold"


def plan_message(sequence: int, decision: Decision, observation: Observation,
                 settings: PlannerSettings, connector: str,
                 decided_at: float) -> planner_pb2.Plan:
    """The decision as ``tandem.v1.Plan``."""
    pools = []
    for pool in POOLS:
        state = observation.pools.get(pool)
        pools.append(planner_pb2.PoolPlan(
            pool=pool, desired=decision.desired.get(pool, 0),
            ready=state.ready if state else 0, starting=state.starting if state else 0,
            draining=state.draining if state else 0, needed=decision.needed.get(pool, 0),
            correction=decision.corrections.get(pool, 1.0)))
    alternatives = [planner_pb2.PlanAlternative(
        prefill_replicas=option.desired.get("prefill", 0),
        decode_replicas=option.desired.get("decode", 0),
        predicted_ttft_ms=_ms(option.predicted_ttft_p),
        predicted_itl_ms=_ms(option.predicted_itl_p),
        violations=option.violations, rejected=option.rejected)
        for option in decision.alternatives]
    return planner_pb2.Plan(
        sequence=sequence, decided_at=decided_at,
        prefill_replicas=decision.desired.get("prefill", 0),
        decode_replicas=decision.desired.get("decode", 0), reason=decision.reason,
        targets=targets_message(settings), pools=pools, observed_rate=observation.rate,
        forecast_rate=decision.forecast_rate,
        predicted_ttft_ms=_ms(decision.predicted_ttft_p),
        predicted_itl_ms=_ms(decision.predicted_itl_p),
        observed_ttft_ms=_ms(observation.observed_ttft_p),
        observed_itl_ms=_ms(observation.observed_itl_p),
        alternatives=alternatives, connector=connector, startup_s=settings.startup_s,
        waiting={str(pool): count for pool, count in observation.waiting.items()})


def record_json(plan: planner_pb2.Plan, observation: Observation) -> str:
    """The stream entry: the plan and the observation it came from."""
    inputs = dataclasses.asdict(observation)
    inputs["pools"] = {pool: dataclasses.asdict(state)
                       for pool, state in observation.pools.items()}
    return json.dumps({"plan": MessageToDict(plan, preserving_proto_field_name=True),
                       "observation": inputs})


class DecisionLog:
    """Records decisions and fans them out to the ``WatchPlans`` calls."""

    def __init__(self, client: aioredis.Redis, namespace: str, maxlen: int,
                 metrics: PlannerMetrics) -> None:
        self.client = client
        self.namespace = namespace
        self.maxlen = maxlen
        self.metrics = metrics
        self.latest: planner_pb2.Plan | None = None
        self.watchers: set[asyncio.Queue[planner_pb2.Plan | None]] = set()

    def watch(self) -> asyncio.Queue[planner_pb2.Plan | None]:
        queue: asyncio.Queue[planner_pb2.Plan | None] = asyncio.Queue()
        self.watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[planner_pb2.Plan | None]) -> None:
        self.watchers.discard(queue)

    def end_watches(self) -> None:
        """Ends every ``WatchPlans`` call (the service drains)."""
        for queue in self.watchers:
            queue.put_nowait(None)

    async def record(self, sequence: int, decision: Decision, observation: Observation,
                     settings: PlannerSettings, connector: str) -> planner_pb2.Plan:
        plan = plan_message(sequence, decision, observation, settings, connector, time.time())
        moved = direction(decision, observation)
        with _tracer.start_as_current_span("planner.decide", attributes=span_attributes(
                plan, moved)) as span:
            self.metrics.latest = Latest(
                desired=dict(decision.desired), pools=dict(observation.pools),
                corrections=dict(decision.corrections), observed_rate=observation.rate,
                forecast_rate=decision.forecast_rate,
                predicted_ttft_s=decision.predicted_ttft_p,
                predicted_itl_s=decision.predicted_itl_p,
                observed_ttft_s=_held(observation.observed_ttft_p,
                                      self.metrics.latest.observed_ttft_s),
                observed_itl_s=_held(observation.observed_itl_p,
                                     self.metrics.latest.observed_itl_s),
                target_ttft_s=settings.ttft_target_s, target_itl_s=settings.itl_target_s,
                startup_s=settings.startup_s)
            self.metrics.decisions.add(1, {"tandem.direction": moved})
            self.latest = plan
            for queue in self.watchers:
                queue.put_nowait(plan)
            try:
                await self.client.xadd(stream_key(self.namespace),
                                       {"plan": record_json(plan, observation)},
                                       maxlen=self.maxlen, approximate=True)
            except Exception as error:  # Redis away: the decision stands, the record is late
                span.record_exception(error)
                log.warning("decision %d not written to the stream", sequence, exc_info=True)
        if moved != "hold":
            log.info("planner decision", extra={"sequence": sequence, "direction": moved,
                                                "reason": decision.reason})
        return plan


def span_attributes(plan: planner_pb2.Plan, moved: str) -> Mapping[str, Any]:
    attributes: dict[str, Any] = {
        "tandem.planner.sequence": plan.sequence, "tandem.planner.direction": moved,
        "tandem.planner.reason": plan.reason, "tandem.planner.connector": plan.connector,
        "tandem.planner.observed_rate": plan.observed_rate,
        "tandem.planner.forecast_rate": plan.forecast_rate,
        "tandem.planner.predicted_ttft_ms": plan.predicted_ttft_ms,
        "tandem.planner.predicted_itl_ms": plan.predicted_itl_ms,
        "tandem.planner.observed_ttft_ms": plan.observed_ttft_ms,
        "tandem.planner.observed_itl_ms": plan.observed_itl_ms,
        "tandem.planner.startup_s": plan.startup_s,
        "tandem.planner.alternatives": json.dumps(
            [MessageToDict(a, preserving_proto_field_name=True) for a in plan.alternatives])}
    for pool in plan.pools:
        for field in ("desired", "ready", "starting", "draining", "needed"):
            attributes[f"tandem.planner.{pool.pool}.{field}"] = getattr(pool, field)
    return attributes
