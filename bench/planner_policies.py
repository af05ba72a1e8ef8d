"""Controllers of the planner benchmark: tandem's planner, static provisioning, a KEDA-style
threshold scaler and a hindsight oracle (Dynamo's SLA planner is in ``planner_dynamo``).

Static and oracle counts come from the planner's own sizing (``services.planner.core.sizing``)
at the benchmark's percentile: static at the peak 1-minute rate or the mean rate of the whole
load; the oracle knows every request of the future and, at each tick, keeps the largest count
any 10-second slot of the next start-up time plus one interval needs (a worker asked for now
serves only after the start-up time; one not needed before a new one could start is drained).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Sequence

from bench.planner_sim import Request, View
from services.planner.core.perf_model import PerformanceModel
from services.planner.core.planner import Planner
from services.planner.core.predictors import make_predictor
from services.planner.core.settings import PlannerSettings
from services.planner.core.types import POOLS, Observation, Pool


def quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class TandemController:
    """The planner under test, fed what its service would read from the metrics."""

    kills = False

    def __init__(self, settings: PlannerSettings, model: PerformanceModel,
                 initial: dict[Pool, int]) -> None:
        self.planner = Planner(settings, model, make_predictor(settings))
        self.interval_s = settings.interval_s
        self.start = initial
        self.last: dict[Pool, int] = dict(initial)

    def initial(self) -> dict[Pool, int]:
        return dict(self.start)

    def tick(self, view: View) -> dict[Pool, int]:
        p = self.planner.settings.percentile
        decision = self.planner.step(Observation(
            now_s=view.now, arrivals=view.arrivals, interval_s=view.interval_s,
            prompt_tokens=tuple(view.prompts), output_tokens=tuple(view.outputs),
            prefix_hit_rate=view.hit_rate, observed_ttft_p=quantile(view.ttfts, p),
            observed_itl_p=quantile(view.itls, p), pools=view.pools,
            waiting={"prefill": sum(view.prefill_waiting) + view.pending["prefill"],
                     "decode": sum(view.decode_waiting) + view.pending["decode"]},
        ))
        return dict(decision.desired)


class StaticController:
    kills = False

    def __init__(self, counts: dict[Pool, int], interval_s: float) -> None:
        self.counts = counts
        self.interval_s = interval_s

    def initial(self) -> dict[Pool, int]:
        return dict(self.counts)

    def tick(self, view: View) -> dict[Pool, int]:
        return dict(self.counts)


@dataclasses.dataclass
class KedaSettings:
    queue_target: float = 5.0
    """Waiting requests per worker that trigger a scale-up (vLLM production-stack's KEDA)."""
    poll_s: float = 15.0
    cooldown_s: float = 360.0
    """Scale-down takes the highest recommendation of this window (HPA stabilisation)."""
    tolerance: float = 0.1
    """HPA ignores a metric within 10% of its target."""
    max_workers: int = 64


class KedaController:
    """Per pool: desired = ceil(current x waiting per ready worker / target) (the HPA rule),
    scale-up at once, scale-down to the highest recommendation of the cooldown window; the
    removed pods are terminated with their requests (no drain)."""

    kills = True

    def __init__(self, settings: KedaSettings, initial: dict[Pool, int]) -> None:
        self.settings = settings
        self.interval_s = settings.poll_s
        self.start = initial
        self.history: dict[Pool, deque[tuple[float, int]]] = {p: deque() for p in POOLS}

    def initial(self) -> dict[Pool, int]:
        return dict(self.start)

    def tick(self, view: View) -> dict[Pool, int]:
        s = self.settings
        waiting = {"prefill": view.prefill_waiting, "decode": view.decode_waiting}
        desired = {}
        for pool in POOLS:
            current = view.pools[pool].provisioned
            ready = max(view.pools[pool].ready, 1)
            metric = sum(waiting[pool]) / ready
            ratio = metric / s.queue_target
            wanted = current if abs(ratio - 1) <= s.tolerance else math.ceil(current * ratio)
            wanted = min(max(wanted, 1), s.max_workers)
            history = self.history[pool]
            history.append((view.now, wanted))
            while history[0][0] < view.now - s.cooldown_s:
                history.popleft()
            desired[pool] = wanted if wanted >= current else max(w for _, w in history)
        return desired


class OracleController:
    """Knows the future: see the module's docstring."""

    kills = False

    def __init__(self, requests: Sequence[Request], planner: Planner, duration_s: float,
                 slot_s: float, startup_s: float) -> None:
        self.interval_s = planner.settings.interval_s
        self.slot_s = slot_s
        self.horizon = startup_s + self.interval_s
        slots: list[list[Request]] = [[] for _ in range(int(duration_s // slot_s) + 2)]
        for request in requests:
            slots[min(int(request.arrival // slot_s), len(slots) - 1)].append(request)
        self.needs: list[dict[Pool, int]] = []
        for batch in slots:
            planner.prompts.clear()
            planner.outputs.clear()
            planner.prompts.extend(r.prompt for r in batch)
            planner.outputs.extend(r.output for r in batch)
            tokens = sum(r.prompt for r in batch)
            planner.hit_rate = sum(r.cached for r in batch) / tokens if tokens else 0.0
            workload = planner.workload(len(batch) / slot_s)
            self.needs.append({pool: planner.need(pool, workload, planner.settings.limits(pool)[0])
                               for pool in POOLS})

    def at(self, start: float, end: float) -> dict[Pool, int]:
        first = max(int(start // self.slot_s), 0)
        last = min(int(end // self.slot_s), len(self.needs) - 1)
        window = self.needs[first:last + 1] or self.needs[-1:]
        return {pool: max(need[pool] for need in window) for pool in POOLS}

    def initial(self) -> dict[Pool, int]:
        return self.at(0.0, self.horizon)

    def tick(self, view: View) -> dict[Pool, int]:
        return self.at(view.now, view.now + self.horizon)
