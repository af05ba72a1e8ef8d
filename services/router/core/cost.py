"""The cost of sending a request to each candidate worker, and the pick. Pure.

    cost = prefill_weight x (prompt blocks - credited overlap) + load

Credited overlap: the leading blocks on the worker's device count fully; leading blocks beyond
those that the KV store holds count with their tier's credit (the worker must fetch them).
Load: prompt blocks routed to the worker and not yet prefilled, plus running and queued
requests and blocks in use, each with its weight. Busy workers are excluded while another is
not busy. Temperature 0 takes the cheapest; above 0, a softmax over -cost samples one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import accumulate

from services.router.core.decision import CandidateScore, WorkerState, by_cost
from services.router.core.index import Overlaps
from services.router.core.routing_settings import RoutingSettings


def store_credit_prefix(store_tiers: Sequence[str], settings: RoutingSettings) -> list[float]:
    """``prefix[i]`` = credit of the first ``i`` store-held leading blocks."""
    return [0.0, *accumulate(settings.tier_credit(tier) for tier in store_tiers)]


def credited_blocks(device_overlap: int, credit_prefix: Sequence[float]) -> float:
    """Device blocks in full, then the store's further leading blocks with their credit."""
    store_overlap = len(credit_prefix) - 1
    if store_overlap <= device_overlap:
        return float(device_overlap)
    return device_overlap + credit_prefix[store_overlap] - credit_prefix[device_overlap]


def worker_load(worker: WorkerState, settings: RoutingSettings) -> float:
    return (settings.pending_prefill_weight * worker.pending_prefill_blocks
            + settings.running_weight * worker.running
            + settings.waiting_weight * worker.waiting
            + settings.used_block_weight * worker.used_blocks)


def is_busy(worker: WorkerState, settings: RoutingSettings) -> bool:
    if worker.waiting >= settings.busy_waiting:
        return True
    return (worker.total_blocks > 0
            and worker.used_blocks >= settings.busy_block_fraction * worker.total_blocks)


def score(
    prompt_blocks: float, overlaps: Overlaps, workers: Sequence[WorkerState],
    settings: RoutingSettings,
) -> tuple[CandidateScore, ...]:
    """Every worker's cost, lowest first."""
    prefix = store_credit_prefix(overlaps.store, settings)
    store_overlap = len(overlaps.store)
    scores = []
    for worker in workers:
        device = overlaps.device.get(worker.worker_id, 0)
        credited = credited_blocks(device, prefix)
        load = worker_load(worker, settings)
        cost = settings.prefill_weight * max(prompt_blocks - credited, 0.0) + load
        scores.append(CandidateScore(worker.worker_id, device, store_overlap, credited, load,
                                     cost, is_busy(worker, settings)))
    return by_cost(scores)


def eligible(scores: Sequence[CandidateScore]) -> tuple[Sequence[CandidateScore], bool]:
    """The non-busy candidates, or all of them (and True) when every one is busy."""
    free = [candidate for candidate in scores if not candidate.busy]
    return (free, False) if free else (scores, True)


def pick(
    scores: Sequence[CandidateScore], settings: RoutingSettings, rng: random.Random
) -> tuple[CandidateScore, bool]:
    """The chosen candidate and whether every candidate was busy. ``scores`` lowest first."""
    if not scores:
        raise ValueError("no candidate workers")
    pool, all_busy = eligible(scores)
    if settings.temperature <= 0 or len(pool) == 1:
        return pool[0], all_busy
    lowest = pool[0].cost
    spread = max(pool[-1].cost - lowest, 1.0)
    weights = [math.exp(-(c.cost - lowest) / (settings.temperature * spread)) for c in pool]
    return rng.choices(list(pool), weights=weights)[0], all_busy
