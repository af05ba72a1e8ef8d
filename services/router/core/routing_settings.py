"""Settings of the routing decision. Frozen: to change them at run time, build a new object
(``dataclasses.replace``, which checks the limits again) and pass it to the next decision."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from annotated_types import Ge, Interval

from tandem.service.settings import Settings

PolicyName = Literal["kv", "round_robin", "random", "least_loaded"]
"""The policies of the registry (``policies.POLICIES``; a test keeps them equal)."""
Weight = Annotated[float, Ge(0)]
Credit = Annotated[float, Interval(ge=0, le=1)]


@dataclasses.dataclass(frozen=True)
class RoutingSettings(Settings):
    """How the router picks a worker: cost = prefill_weight x (prompt blocks - credited
    overlap) + load; lowest cost wins."""

    policy: PolicyName = "kv"
    """Routing policy: kv, round_robin, random or least_loaded."""
    prefill_weight: Weight = 1.0
    """Cost of one prompt block that still has to be prefilled."""
    cxl_credit: Credit = 0.8
    """Credit (0-1) of a leading block held by the KV store's shared-memory tier; blocks on the
    worker's own device count fully."""
    nvme_credit: Credit = 0.5
    """Credit (0-1) of a leading block held by the KV store's disk tier (and unknown tiers)."""
    pending_prefill_weight: Weight = 0.5
    """Cost per prompt block routed to the worker whose prefill has not finished yet. Below
    prefill_weight: a prefill in flight shares the engine's steps with a new prompt rather
    than running before it, and a cache hit saves the fleet's compute, not only this
    request's wait. 0.5 against 1.0 (2026-12-04): Dynamo's workload (bench.vs_dynamo_kv) cached
    0.869 (4 runs) against 0.822-0.846 at the same TTFT; the routing simulation
    (bench.routing_quality) 0.929 against 0.918 of an oracle's 0.930, and 1.11x the capacity at
    the same mean TTFT."""
    running_weight: Weight = 2.0
    """Cost per request running on the worker (each slows every decode step a little)."""
    waiting_weight: Weight = 8.0
    """Cost per request queued on the worker."""
    used_block_weight: Weight = 0.0
    """Cost per KV block in use on the worker's device."""
    busy_block_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.97
    """A worker whose used/total KV blocks reach this fraction is busy: not a candidate while
    another worker is not busy."""
    busy_waiting: Annotated[int, Ge(1)] = 64
    """A worker with this many queued requests is busy."""
    temperature: Weight = 0.0
    """0 picks the lowest cost; above 0 samples a softmax of -cost/(temperature x cost
    spread) over the non-busy candidates to spread load."""
    explain_top: Annotated[int, Ge(0)] = 3
    """Candidates recorded on the routing span."""
    seed: int | None = None
    """Seed of the random choices (random policy, softmax sampling); unset: not reproducible."""

    def tier_credit(self, tier: str) -> float:
        """Credit of a block held by store tier ``tier``."""
        return self.cxl_credit if tier == "cxl" else self.nvme_credit
