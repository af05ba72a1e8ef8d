"""The planner: one ``step`` per tick turns an observation of the pools into a decision.

Each tick it (1) feeds the rate to the predictor and keeps the latest length samples, (2)
corrects the performance model by observed/predicted latency (bounded), (3) forecasts the
peak rate over the next start-up time plus one interval (a worker asked for now serves then),
(4) sizes each pool for that rate at the target percentile, (5) jumps up to the need at once,
or shrinks slowly (``rules``), and (6) splits a budget where the need does not fit it. Pure:
no I/O, no clock; the caller passes the time in the observation."""

from __future__ import annotations

import math
from collections import deque

from services.planner.core.allocation import allocate
from services.planner.core.perf_model import PerformanceModel
from services.planner.core.predictors import Predictor, make_predictor
from services.planner.core.rules import ScaleRules
from services.planner.core.settings import PlannerSettings
from services.planner.core.sizing import (
    PoolPrediction,
    Workload,
    capacity,
    fewest,
    predict_decode,
    predict_prefill,
)
from services.planner.core.types import POOLS, Alternative, Decision, Observation, Pool, PoolState


class Planner:
    """Sizes the prefill and decode pools; holds the state of its rules between ticks."""

    def __init__(
        self, settings: PlannerSettings, model: PerformanceModel, predictor: Predictor | None = None
    ) -> None:
        self.settings = settings
        self.model = model
        self.predictor = predictor if predictor is not None else make_predictor(settings)
        self.prompts: deque[int] = deque(maxlen=settings.samples)
        self.outputs: deque[int] = deque(maxlen=settings.samples)
        self.hit_rate = 0.0
        self.corrections: dict[Pool, float] = {pool: 1.0 for pool in POOLS}
        self.rules = ScaleRules(settings)
        self.waiting: dict[Pool, int] = {}
        self.last_waiting: dict[Pool, int] = {}

    def retarget(self, settings: PlannerSettings) -> None:
        """New targets and limits from the next tick on (the learned state stays)."""
        self.settings = settings
        self.rules.settings = settings
        self.prompts = deque(self.prompts, maxlen=settings.samples)
        self.outputs = deque(self.outputs, maxlen=settings.samples)

    # -- predictions -----------------------------------------------------------------------

    def workload(self, rate: float) -> Workload:
        """The load of ``rate`` requests per second shaped like the latest samples."""
        return Workload.from_samples(
            rate, tuple(self.prompts), tuple(self.outputs), self.hit_rate, self.model
        )

    def predict(
        self, pool: Pool, workload: Workload, workers: int, latency: bool = True
    ) -> PoolPrediction:
        """``pool`` with ``workers`` at ``workload``; with ``latency``, its latency at the target
        percentile too."""
        s = self.settings
        q = s.percentile
        if pool == "prefill":
            return predict_prefill(
                workload,
                workers,
                self.model,
                s.ttft_target_s,
                q,
                self.corrections["prefill"],
                s.handoff_s,
                latency,
            )
        return predict_decode(
            workload, workers, self.model, s.itl_target_s, q, self.corrections["decode"]
        )

    def allowed_miss(self) -> float:
        """Share of a pool's requests that may miss its target: half of 1 - percentile."""
        return (1 - self.settings.percentile) / 2

    def need(self, pool: Pool, workload: Workload, low: int) -> int:
        high = self.settings.limits(pool)[1]
        return fewest(
            lambda n: self.predict(pool, workload, n, latency=False),
            low,
            max(high, low),
            self.allowed_miss(),
        )

    # -- the tick --------------------------------------------------------------------------

    def _ingest(self, observation: Observation) -> None:
        self.last_waiting = self.waiting
        self.waiting = dict(observation.waiting)
        self.prompts.extend(observation.prompt_tokens)
        self.outputs.extend(observation.output_tokens)
        if observation.arrivals > 0:
            self.hit_rate = min(max(observation.prefix_hit_rate, 0.0), 1.0)
        self.predictor.observe(observation.now_s, observation.rate)

    def _correct(self, observation: Observation) -> None:
        """Moves each pool's correction towards observed/predicted latency at the observed
        rate and ready workers, within [correction_min, correction_max]."""
        s = self.settings
        if observation.arrivals < s.correction_min_arrivals or s.correction_smoothing == 0:
            return
        workload = self.workload(observation.rate)
        observed = {"prefill": observation.observed_ttft_p, "decode": observation.observed_itl_p}
        for pool in POOLS:
            seen = observed[pool]
            state = observation.pools.get(pool)
            queued = (observation.waiting.get(pool, 0), self.last_waiting.get(pool, 0))
            if seen is None or seen <= 0 or state is None or state.ready <= 0 or any(queued):
                continue  # a queue left from a burst is not the model's error
            predicted = self.predict(pool, workload, state.ready)
            if predicted.utilisation >= s.correction_max_load or not (
                0 < predicted.latency_p < math.inf
            ):
                continue
            factor = self.corrections[pool] * (seen / predicted.latency_p) ** s.correction_smoothing
            self.corrections[pool] = min(max(factor, s.correction_min), s.correction_max)

    def backlog(
        self, observation: Observation, workload: Workload, pools: dict[Pool, PoolState]
    ) -> dict[Pool, float]:
        """Requests per second each pool needs on top of the forecast to drain, within
        ``backlog_drain_s``, the queue it will have when a worker asked for now starts: what
        waits now, plus what its ready workers cannot serve of the current rate until the
        pending ones start, plus what all its workers cannot serve after that."""
        s = self.settings
        now = workload.at_rate(observation.rate)
        extra: dict[Pool, float] = {}
        for pool in POOLS:
            k = self.corrections[pool]
            state = pools[pool]
            pending = 0.0
            if state.starting:
                pending = min(
                    max(self.rules.last_growth[pool] + s.startup_s - observation.now_s, 0.0),
                    s.startup_s,
                )
            ready = capacity(pool, now, state.ready, self.model, k)
            provisioned = capacity(pool, now, state.provisioned, self.model, k)
            queue = (
                observation.waiting.get(pool, 0)
                + max(0.0, observation.rate - ready) * pending
                + max(0.0, observation.rate - provisioned) * (s.startup_s - pending)
            )
            extra[pool] = queue / s.backlog_drain_s
        return extra

    def step(self, observation: Observation) -> Decision:
        """The decision for this tick."""
        s = self.settings
        self._ingest(observation)
        self._correct(observation)
        now = observation.now_s
        forecast = max(self.predictor.peak(s.startup_s + s.interval_s), 0.0)
        idle = self.rules.idle(observation)
        workload = self.workload(forecast)
        margin = workload.at_rate(forecast * (1 + s.scale_down_margin))
        pools = {pool: observation.pools.get(pool, PoolState(0)) for pool in POOLS}
        backlog = self.backlog(observation, workload, pools)
        low = {pool: self.rules.floor(pool, idle) for pool in POOLS}
        high = {pool: max(s.limits(pool)[1], low[pool]) for pool in POOLS}
        up = {
            pool: 0
            if idle
            else self.need(pool, workload.at_rate(forecast + backlog[pool]), low[pool])
            for pool in POOLS
        }
        down = {pool: self.need(pool, margin, low[pool]) if not idle else 0 for pool in POOLS}
        wanted, why = self.rules.apply(now, pools, up, down, idle)
        if any(backlog.values()):
            why += "; draining a backlog of " + ", ".join(
                f"{rate * s.backlog_drain_s:.0f} {pool}" for pool, rate in backlog.items() if rate
            )

        def violations(pool: Pool, count: int) -> float:
            return forecast * self.predict(pool, workload, count, latency=False).miss

        have = {pool: pools[pool].provisioned for pool in POOLS}
        desired = allocate(wanted, low, high, s.budget, violations, have)
        if desired != wanted:
            why = f"budget {s.budget}: " + why
        self.rules.commit(now, pools, desired)
        ttft = self.predict("prefill", workload, desired["prefill"])
        itl = self.predict("decode", workload, desired["decode"])
        return Decision(
            desired=desired,
            reason=why,
            forecast_rate=forecast,
            predicted_ttft_p=ttft.latency_p,
            predicted_itl_p=itl.latency_p,
            alternatives=self._alternatives(workload, backlog, desired, wanted, up),
            corrections=dict(self.corrections),
            needed=up,
        )

    def _alternatives(
        self,
        workload: Workload,
        backlog: dict[Pool, float],
        desired: dict[Pool, int],
        wanted: dict[Pool, int],
        up: dict[Pool, int],
    ) -> tuple[Alternative, ...]:
        """One worker more and one fewer per pool, and the need over a budget, each with its
        predictions at the forecast and why it was not taken."""
        s = self.settings
        allowed = self.allowed_miss()
        options: list[tuple[dict[Pool, int], str]] = []
        for pool in POOLS:
            more = {**desired, pool: desired[pool] + 1}
            options.append(
                (
                    more,
                    f"one more {pool} worker is not needed for the targets"
                    if desired[pool] >= up[pool]
                    else f"over the budget ({s.budget} workers)",
                )
            )
            if desired[pool] > 0:
                fewer = {**desired, pool: desired[pool] - 1}
                miss = self.predict(pool, workload, fewer[pool], latency=False).miss
                drain = workload.at_rate(workload.rate + backlog[pool])
                draining = self.predict(pool, drain, fewer[pool], latency=False).miss
                if miss > allowed:
                    why = f"{pool} would miss its target for {miss:.1%} of requests"
                    why += f" (allowed {allowed:.1%})"
                elif draining > allowed:
                    why = f"{pool} would not drain its backlog in {s.backlog_drain_s:.0f} s"
                else:
                    why = f"{pool} shrinks slowly (delay, margin, lifetime, pending start)"
                options.append((fewer, why))
        if wanted != desired:
            options.append((dict(wanted), f"over the budget ({s.budget} workers)"))
        result = []
        for counts, rejected in options:
            ttft = self.predict("prefill", workload, counts["prefill"])
            itl = self.predict("decode", workload, counts["decode"])
            misses = workload.rate * (ttft.miss + itl.miss)
            result.append(Alternative(counts, ttft.latency_p, itl.latency_p, misses, rejected))
        return tuple(result)


def planner_from_profile(settings: PlannerSettings, profile: str) -> Planner:
    """A planner whose performance model is the mock engine's profile ``profile`` (a name
    under tandem/engines/mock/profiles/ or a path): reads the file once."""
    from tandem.engines.mock.perf import load_profile

    return Planner(settings, PerformanceModel(load_profile(profile)))


__all__ = ["Planner", "planner_from_profile"]
