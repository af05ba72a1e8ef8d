"""Per-pool sizing: the fewest workers whose predicted latency percentile meets its target at
a given load, from the distributions of prompt length, output length and prefix hit rate.

Prefill pool: an M/G/c queue (the router sends each prompt to the worker with the least queued
work, close to one shared FIFO), service time = the profile's prefill time of the uncached
part of each sampled prompt; TTFT = wait + service + hand-off, the wait's tail from the whole
sample of service times (``queueing``), the sum's tail a mixture over the samples. Decode
pool: each worker's batch is the number of requests decoding on it, by Little's law
n = λ/c · E[output] · step(n) (a fixed point, linear in n); the batch is Poisson around n; a
request's inter-token latency is the step time of its batch. A target percentile p gives
each pool half of the allowed misses, (1 - p)/2, so that ≥ p of requests meet both."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

from services.planner.core.perf_model import PerformanceModel
from services.planner.core.queueing import (
    poisson_tail,
    sojourn_quantile,
    sojourn_tail,
    wait_tail_params,
)

MAX_POINTS = 256
"""Service-time samples the prefill tail mixes over (quantiles of the samples beyond that)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """The load a sizing is for: a rate and what its requests look like to the workers."""

    rate: float
    """Requests per second."""
    prefill_s: np.ndarray
    """Prefill seconds of sampled requests on one worker (uncorrected)."""
    prefill_mean: float
    """Their mean."""
    prefill_scv: float
    """Their squared coefficient of variation (variance / mean²)."""
    mean_output: float
    """Mean output tokens."""
    decode_context: float
    """Mean context of a decoding sequence, weighted by its time in the batch: E[prompt] +
    E[output²] / (2 E[output])."""

    @classmethod
    def from_samples(
        cls,
        rate: float,
        prompts: Sequence[int],
        outputs: Sequence[int],
        hit_rate: float,
        model: PerformanceModel,
    ) -> Workload:
        prompt = np.asarray(prompts if prompts else [1], dtype=float)
        output = np.asarray(outputs if outputs else [1], dtype=float)
        if prompt.size > MAX_POINTS:
            prompt = np.quantile(prompt, (np.arange(MAX_POINTS) + 0.5) / MAX_POINTS)
        hit = min(max(hit_rate, 0.0), 1.0)
        prefill = model.prefill_s_array(prompt * (1 - hit), prompt * hit)
        mean = float(prefill.mean())
        scv = float(prefill.var()) / mean**2 if mean > 0 else 0.0
        mean_output = float(max(output.mean(), 1.0))
        context = float(prompt.mean() + (output**2).mean() / (2 * mean_output))
        return cls(max(rate, 0.0), prefill, mean, scv, mean_output, context)

    def at_rate(self, rate: float) -> Workload:
        return dataclasses.replace(self, rate=max(rate, 0.0))


@dataclasses.dataclass(frozen=True)
class PoolPrediction:
    """What a pool of ``workers`` gives at a load."""

    workers: int
    miss: float
    """Predicted share of requests missing this pool's target (0-1)."""
    latency_p: float
    """Predicted latency at the percentile asked (TTFT or ITL), seconds; inf: over capacity;
    nan when not asked for (``latency=False``)."""
    utilisation: float
    """Offered load per worker (0-1; above 1: unstable)."""


def predict_prefill(
    workload: Workload,
    workers: int,
    model: PerformanceModel,
    target_s: float,
    quantile: float,
    correction: float = 1.0,
    handoff_s: float = 0.0,
    latency: bool = True,
) -> PoolPrediction:
    """TTFT of a prefill pool of ``workers`` at ``workload`` (its percentile only with
    ``latency``: it costs a search)."""
    service = workload.prefill_s * correction
    mean = workload.prefill_mean * correction
    rate = workload.rate
    utilisation = rate * mean / workers if workers > 0 else math.inf
    if rate <= 0:
        return PoolPrediction(workers, 0.0, float(np.quantile(service, quantile)) + handoff_s, 0.0)
    if workers <= 0:
        return PoolPrediction(workers, 1.0, math.inf, math.inf)
    waiting, theta = wait_tail_params(workers, rate, service, mean)
    miss = sojourn_tail(target_s - handoff_s, service, waiting, theta)
    ttft = sojourn_quantile(quantile, service, waiting, theta) + handoff_s if latency else math.nan
    return PoolPrediction(workers, miss, ttft, utilisation)


def predict_decode(
    workload: Workload,
    workers: int,
    model: PerformanceModel,
    target_s: float,
    quantile: float,
    correction: float = 1.0,
) -> PoolPrediction:
    """Inter-token latency of a decode pool of ``workers`` at ``workload``."""
    fixed = model.decode_fixed_s() * correction
    per_seq = model.decode_per_seq_s(workload.decode_context) * correction
    rate = workload.rate
    if rate <= 0:
        return PoolPrediction(workers, 0.0, fixed + per_seq, 0.0)
    if workers <= 0:
        return PoolPrediction(workers, 1.0, math.inf, math.inf)
    demand = rate / workers * workload.mean_output  # tokens per second per worker
    capacity = min(model.max_num_seqs, model.kv_tokens / max(workload.decode_context, 1.0))
    utilisation = demand * per_seq  # share of a step the batch-proportional part takes
    if utilisation >= 1:
        return PoolPrediction(workers, 1.0, math.inf, utilisation)
    batch = demand * fixed / (1 - utilisation)
    if target_s <= fixed:
        fits_target: float = -1  # not even one sequence meets the target
    elif per_seq > 0:
        fits_target = math.floor((target_s - fixed) / per_seq)
    else:  # a profile without a per-sequence cost: only max_num_seqs bounds the batch
        fits_target = math.inf
    limit = min(capacity, fits_target)
    miss = poisson_tail(limit, batch)
    high = batch + NormalDist().inv_cdf(quantile) * math.sqrt(batch)
    latency = fixed + per_seq * max(high, 1.0) if high <= capacity else math.inf
    return PoolPrediction(workers, miss, latency, max(utilisation, batch / capacity))


def capacity(
    pool: str, workload: Workload, workers: int, model: PerformanceModel, correction: float = 1.0
) -> float:
    """Requests per second ``workers`` of ``pool`` serve flat out (utilisation 1): the rate
    above which a queue grows."""
    if workers <= 0:
        return 0.0
    if pool == "prefill":
        seconds = workload.prefill_mean * correction
        return workers / seconds if seconds > 0 else math.inf
    batch = min(model.max_num_seqs, model.kv_tokens / max(workload.decode_context, 1.0))
    step = model.decode_fixed_s() + model.decode_per_seq_s(workload.decode_context) * batch
    seconds = workload.mean_output * step * correction
    return workers * batch / seconds if seconds > 0 else math.inf


def fewest(
    predict: Callable[[int], PoolPrediction], low: int, high: int, allowed_miss: float
) -> int:
    """The fewest workers in [low, high] whose predicted miss is ≤ ``allowed_miss`` (``high``
    when none is); ``predict`` maps a count to a ``PoolPrediction`` whose miss falls as the
    count grows."""
    if high <= low or predict(low).miss <= allowed_miss:
        return max(low, min(low, high))
    bad, good = low, high  # predict(bad) misses; good is the answer if nothing smaller is
    while good - bad > 1:
        mid = (bad + good) // 2
        if predict(mid).miss <= allowed_miss:
            good = mid
        else:
            bad = mid
    return good
