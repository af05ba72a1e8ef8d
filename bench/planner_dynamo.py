"""A port of NVIDIA Dynamo's SLA planner (components/src/dynamo/planner: throughput_scaling.py,
load_scaling.py, load/predictors.py) onto the benchmark's simulator, with the mock engine's
performance model standing in for its profiled one.

Throughput loop, every ``throughput_interval_s`` (180 s): predict the next interval's request
count, mean ISL, mean OSL and KV hit rate (``constant``: the last value; ``arima``: an ARIMA
whose order is chosen once by AIC, as pmdarima's auto_arima does, then extended with each new
point), λ = count / interval, then

    P = max(ceil(λ / prefill_rps), ceil(ttft_est / ttft), min)    prefill_rps = 1 / t_p(ISL(1-hit))
    D = max(ceil(λ / decode_rps), min)                             decode_rps = B* / (OSL · t_d(B*))

with B* the largest batch ≤ min(max_num_seqs, KV / (ISL + OSL/2)) whose step meets the ITL
target. With the load loop on, P and D are floors. Load loop, every 5 s per pool (skipped while
a worker of the pool is starting): TTFT estimate per prefill worker = t_p(queued tokens + its
own ISL); ITL estimate per decode worker = t_d at its running + waiting KV; all above the
target: +1; else, when every worker passes the consolidation check (load x N/(N-1): the
queue-induced TTFT within 80% of target minus own compute; KV fits and ITL within 80% of
target): -1. A budget scales both counts down proportionally. Scale-down terminates workers
without draining (as documented upstream).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

from bench.planner_sim import View
from services.planner.core.perf_model import PerformanceModel
from services.planner.core.types import POOLS, Pool


class ConstantSeries:
    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        if value or self.values:  # upstream skips the leading idle zeros
            self.values.append(value)

    def next(self) -> float:
        return self.values[-1] if self.values else 0.0


class ArimaSeries(ConstantSeries):
    """ARIMA(p, d, q): the order chosen by AIC over p, d, q ≤ 1 at the first fit (5 points),
    as pmdarima's auto_arima does once upstream (its stepwise search visits a handful of
    orders too); each later point extends the fitted
    model without refitting (upstream: ``model.update``); the last value when fitting fails."""

    MIN_POINTS = 5

    def __init__(self) -> None:
        super().__init__()
        self.result: Any = None
        self.fed = 0

    def _fit(self) -> None:
        from statsmodels.tsa.arima.model import ARIMA  # imported (warning filters) by next()

        if self.result is None:
            fits = []
            for p in range(2):
                for d in range(2):
                    for q in range(2):
                        fitted = ARIMA(self.values, order=(p, d, q)).fit()
                        fits.append((fitted.aic, p, d, q, fitted))
            self.result = min(fits, key=lambda fit: fit[0])[-1]
        elif self.fed < len(self.values):
            self.result = self.result.append(self.values[self.fed :], refit=False)
        self.fed = len(self.values)

    def next(self) -> float:
        if len(self.values) < self.MIN_POINTS or len(set(self.values)) == 1:
            return super().next()
        import statsmodels.tsa.arima.model  # noqa: F401  its import sets "always" filters

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self._fit()
                return max(0.0, float(self.result.forecast(1)[0]))
            except Exception:  # upstream: "ARIMA prediction failed ..., using last value"
                return super().next()


def arima_available() -> bool:
    try:
        import statsmodels.tsa.arima.model  # noqa: F401
    except ImportError:
        return False
    return True


class DynamoController:
    kills = True

    def __init__(
        self,
        model: PerformanceModel,
        ttft_s: float,
        itl_s: float,
        initial: dict[Pool, int],
        predictor: str = "constant",
        budget: int | None = None,
        throughput_interval_s: float = 180.0,
        load_interval_s: float = 5.0,
        sensitivity: float = 0.8,
        min_endpoint: int = 1,
    ) -> None:
        self.model = model
        self.ttft, self.itl = ttft_s, itl_s
        self.start = initial
        self.budget = budget
        self.interval_s = load_interval_s
        self.every = max(1, round(throughput_interval_s / load_interval_s))
        self.sensitivity = sensitivity
        self.min = min_endpoint
        series = ArimaSeries if predictor == "arima" else ConstantSeries
        self.count, self.isl, self.osl, self.hit = series(), series(), series(), series()
        self.ticks = 0
        self.acc = [0, 0.0, 0.0, 0.0, 0.0]  # arrivals, prompt sum, output sum, hit sum, s
        self.floor = dict(initial)
        self.current = dict(initial)

    def initial(self) -> dict[Pool, int]:
        return dict(self.start)

    # -- the throughput loop ---------------------------------------------------------------

    def decode_batch(self, isl: float, osl: float) -> int:
        context = isl + osl / 2
        cap = int(min(self.model.max_num_seqs, self.model.kv_tokens / max(context, 1)))
        best = 1
        for batch in range(1, cap + 1):
            if self.model.decode_step_s(batch, batch * context) <= self.itl:
                best = batch
        return best

    def throughput(self) -> None:
        interval = self.every * self.interval_s
        rate = self.count.next() / interval
        isl, osl, hit = self.isl.next(), self.osl.next(), min(max(self.hit.next(), 0.0), 1.0)
        ttft = self.model.prefill_s(isl * (1 - hit), isl * hit)
        prefill = math.ceil(rate * ttft)  # λ / (1 / t_p)
        floor = math.ceil(ttft / self.ttft) if ttft > self.ttft else 1
        batch = self.decode_batch(isl, osl)
        step = self.model.decode_step_s(batch, batch * (isl + osl / 2))
        decode = math.ceil(rate * max(osl, 1) * step / batch)
        self.floor = {"prefill": max(prefill, floor, self.min), "decode": max(decode, self.min)}

    # -- the load loop ---------------------------------------------------------------------

    def prefill_load(self, view: View, workers: int) -> int | None:
        isl = self.isl.next()
        hit = min(max(self.hit.next(), 0.0), 1.0)
        own = self.model.prefill_s(isl * (1 - hit))
        estimates = [self.model.prefill_s(q + isl * (1 - hit)) for q in view.prefill_queued_tokens]
        if not estimates:
            return None
        if all(e > self.ttft for e in estimates):
            return workers + 1
        if workers > 1:
            budget = (self.ttft - own) * self.sensitivity
            post = workers / (workers - 1)
            if budget > 0 and all(
                self.model.prefill_s(q * post + isl * (1 - hit)) - own < budget
                for q in view.prefill_queued_tokens
            ):
                return workers - 1
        return None

    def itl_at(self, kv: float) -> float:
        context = max(self.isl.next() + self.osl.next() / 2, 1.0)
        return self.model.decode_step_s(max(kv / context, 1.0), kv)

    def decode_load(self, view: View, workers: int) -> int | None:
        if not view.decode_kv:
            return None
        estimates = [self.itl_at(running + waiting) for running, waiting in view.decode_kv]
        if all(e > self.itl for e in estimates):
            return workers + 1
        if workers > 1:
            post = workers / (workers - 1)
            if all(
                (r + w) * post < self.model.kv_tokens
                and self.itl_at((r + w) * post) < self.itl * self.sensitivity
                for r, w in view.decode_kv
            ):
                return workers - 1
        return None

    def apply_budget(self, counts: dict[Pool, int]) -> dict[Pool, int]:
        total = sum(counts.values())
        if self.budget is None or total <= self.budget:
            return counts
        scale = self.budget / total
        return {pool: max(self.min, math.floor(n * scale)) for pool, n in counts.items()}

    def tick(self, view: View) -> dict[Pool, int]:
        self.acc[0] += view.arrivals
        self.acc[1] += sum(view.prompts)
        self.acc[2] += sum(view.outputs)
        self.acc[3] += view.hit_rate * sum(view.prompts)
        self.ticks += 1
        if self.ticks % self.every == 0:
            arrivals, prompts, outputs, hits, _ = self.acc
            self.count.add(arrivals)
            if arrivals:
                self.isl.add(prompts / arrivals)
                self.osl.add(outputs / arrivals)
                self.hit.add(hits / prompts if prompts else 0.0)
            self.acc = [0, 0.0, 0.0, 0.0, 0.0]
            self.throughput()
        desired = {}
        loads = {"prefill": self.prefill_load, "decode": self.decode_load}
        for pool in POOLS:
            state = view.pools[pool]
            current = state.provisioned
            decided = None if state.starting else loads[pool](view, state.ready)
            desired[pool] = max(
                decided if decided is not None else current, self.floor[pool], self.min
            )
        return self.apply_budget(desired)


def decision_changes(decisions: Sequence[tuple[float, dict[Pool, int]]], pool: Pool) -> int:
    """Direction changes of a pool's count over a run (up then down, or down then up)."""
    changes, direction, previous = 0, 0, None
    for _, counts in decisions:
        count = counts[pool]
        if previous is not None and count != previous:
            step = 1 if count > previous else -1
            if direction and step != direction:
                changes += 1
            direction = step
        previous = count
    return changes
