"""Joint allocation of a worker budget between the prefill and decode pools: starting from
each pool's minimum, the next worker goes to the pool where it removes the most predicted
violations (requests per second missing a target), until the budget is spent or no worker
removes any."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.planner.core.types import POOLS, Pool

ViolationRate = Callable[[Pool, int], float]
"""Predicted requests per second that miss ``pool``'s target with ``count`` workers."""


def allocate(
    need: Mapping[Pool, int],
    low: Mapping[Pool, int],
    high: Mapping[Pool, int],
    budget: int | None,
    violations: ViolationRate,
    have: Mapping[Pool, int] | None = None,
) -> dict[Pool, int]:
    """Workers per pool: ``need`` when it fits ``budget``, else a greedy split of the budget
    (never above ``need``: past it a worker removes nothing the sizing counts). The split
    starts from the workers each pool ``have``s and still needs, when they fit: taking a
    serving worker from one pool to start one for the other loses a worker for the start-up
    time."""
    wanted = {pool: min(max(need[pool], low[pool]), high[pool]) for pool in POOLS}
    if budget is None or sum(wanted.values()) <= budget:
        return wanted
    counts = {pool: low[pool] for pool in POOLS}
    if have is not None:
        kept = {pool: max(low[pool], min(have[pool], wanted[pool])) for pool in POOLS}
        if sum(kept.values()) <= budget:
            counts = kept
    while sum(counts.values()) < budget:
        best: Pool | None = None
        best_gain = 0.0
        for pool in POOLS:
            if counts[pool] >= wanted[pool]:
                continue
            gain = violations(pool, counts[pool]) - violations(pool, counts[pool] + 1)
            if best is None or gain > best_gain:
                best, best_gain = pool, gain
        if best is None:
            break
        counts[best] += 1
    return counts
