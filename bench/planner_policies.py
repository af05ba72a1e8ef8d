"""Controllers of the planner benchmark: tandem's planner, static provisioning, a KEDA-style
threshold scaler and a hindsight oracle (Dynamo's SLA planner is in ``planner_dynamo``).

Static and oracle counts come from the planner's own sizing (``services.planner.core.sizing``)
at the benchmark's percentile: static at the peak 1-minute rate or the mean rate of the whole
load; the oracle knows every request of the future and, at each tick, keeps the largest count
any slot (10 s; its rate from its own arrivals, its lengths from the requests within 5
minutes) of the next start-up time plus one interval needs (a worker asked for now
serves only after the start-up time; one not needed before a new one could start is drained).
"""

from __future__ import annotations

import bisect
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

    def __init__(
        self, settings: PlannerSettings, model: PerformanceModel, initial: dict[Pool, int]
    ) -> None:
        self.planner = Planner(settings, model, make_predictor(settings))
        self.interval_s = settings.interval_s
        self.start = initial
        self.last: dict[Pool, int] = dict(initial)

    def initial(self) -> dict[Pool, int]:
        return dict(self.start)

    def tick(self, view: View) -> dict[Pool, int]:
        p = self.planner.settings.percentile
        decision = self.planner.step(
            Observation(
                now_s=view.now,
                arrivals=view.arrivals,
                interval_s=view.interval_s,
                prompt_tokens=tuple(view.prompts),
                output_tokens=tuple(view.outputs),
                prefix_hit_rate=view.hit_rate,
                observed_ttft_p=quantile(view.ttfts, p),
                observed_itl_p=quantile(view.itls, p),
                pools=view.pools,
                waiting={
                    "prefill": sum(view.prefill_waiting) + view.pending["prefill"],
                    "decode": sum(view.decode_waiting) + view.pending["decode"],
                },
            )
        )
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
    """Waiting requests per worker (vLLM production-stack's KEDA trigger on
    vllm:num_requests_waiting, an AverageValue target)."""
    poll_s: float = 15.0
    cooldown_s: float = 360.0
    """Scale-down takes the highest recommendation of this window."""
    tolerance: float = 0.1
    """HPA ignores a usage ratio within 10% of 1."""
    max_workers: int = 64


class KedaController:
    """Per pool, the HPA rule for an external AverageValue metric: desired = ceil(total
    waiting / target) unless the ratio is within the tolerance; scale-up at most to max(2x,
    +4) per poll (HPA's default policy); scale-down to the highest recommendation of the
    cooldown window; removed pods are terminated with their requests (no drain)."""

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
        waiting = {
            "prefill": sum(view.prefill_waiting) + view.pending["prefill"],
            "decode": sum(view.decode_waiting) + view.pending["decode"],
        }
        desired = {}
        for pool in POOLS:
            current = max(view.pools[pool].provisioned, 1)
            ratio = waiting[pool] / current / s.queue_target
            wanted = (
                current
                if abs(ratio - 1) <= s.tolerance
                else math.ceil(waiting[pool] / s.queue_target)
            )
            wanted = min(max(wanted, 1), s.max_workers, max(2 * current, current + 4))
            history = self.history[pool]
            history.append((view.now, wanted))
            while history[0][0] < view.now - s.cooldown_s:
                history.popleft()
            desired[pool] = wanted if wanted >= current else max(w for _, w in history)
        return desired


class OracleController:
    """Knows the future: see the module's docstring."""

    kills = False

    def __init__(
        self,
        requests: Sequence[Request],
        planner: Planner,
        duration_s: float,
        slot_s: float,
        startup_s: float,
        context_s: float,
    ) -> None:
        self.interval_s = planner.settings.interval_s
        self.slot_s = slot_s
        self.horizon = startup_s + self.interval_s
        slots = int(duration_s // slot_s) + 2
        counts = [0] * slots
        for request in requests:
            counts[min(int(request.arrival // slot_s), slots - 1)] += 1
        arrivals = [r.arrival for r in requests]
        self.needs: list[dict[Pool, int]] = []
        for slot, count in enumerate(counts):
            lo = bisect.bisect_left(arrivals, slot * slot_s - context_s)
            hi = bisect.bisect_right(arrivals, (slot + 1) * slot_s + context_s)
            around = requests[lo:hi][-planner.settings.samples :]
            planner.prompts.clear()
            planner.outputs.clear()
            planner.prompts.extend(r.prompt for r in around)
            planner.outputs.extend(r.output for r in around)
            tokens = sum(r.prompt for r in around)
            planner.hit_rate = sum(r.cached for r in around) / tokens if tokens else 0.0
            workload = planner.workload(count / slot_s)
            self.needs.append(
                {
                    pool: planner.need(pool, workload, planner.settings.limits(pool)[0])
                    for pool in POOLS
                }
            )

    def at(self, start: float, end: float) -> dict[Pool, int]:
        first = max(int(start // self.slot_s), 0)
        last = min(int(end // self.slot_s), len(self.needs) - 1)
        window = self.needs[first : last + 1] or self.needs[-1:]
        return {pool: max(need[pool] for need in window) for pool in POOLS}

    def initial(self) -> dict[Pool, int]:
        return self.at(0.0, self.horizon)

    def tick(self, view: View) -> dict[Pool, int]:
        return self.at(view.now, view.now + self.horizon)
