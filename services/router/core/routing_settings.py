"""Settings of the routing decision. Frozen: to change them at run time, build a new object
(``dataclasses.replace`` + ``validate``) and pass it to the next decision."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RoutingSettings:
    """How the router picks a worker: cost = prefill_weight x (prompt blocks - credited
    overlap) + load; lowest cost wins."""

    policy: str = "kv"
    """Routing policy: kv, round_robin, random or least_loaded."""
    prefill_weight: float = 1.0
    """Cost of one prompt block that still has to be prefilled."""
    cxl_credit: float = 0.8
    """Credit (0-1) of a leading block held by the KV store's shared-memory tier; blocks on the
    worker's own device count fully."""
    nvme_credit: float = 0.5
    """Credit (0-1) of a leading block held by the KV store's disk tier (and unknown tiers)."""
    pending_prefill_weight: float = 1.0
    """Cost per prompt block routed to the worker whose prefill has not finished yet."""
    running_weight: float = 2.0
    """Cost per request running on the worker (each slows every decode step a little)."""
    waiting_weight: float = 8.0
    """Cost per request queued on the worker."""
    used_block_weight: float = 0.0
    """Cost per KV block in use on the worker's device."""
    busy_block_fraction: float = 0.97
    """A worker whose used/total KV blocks reach this fraction is busy: not a candidate while
    another worker is not busy."""
    busy_waiting: int = 64
    """A worker with this many queued requests is busy."""
    temperature: float = 0.0
    """0 picks the lowest cost; above 0 samples a softmax of -cost/(temperature x cost
    spread) over the non-busy candidates to spread load."""
    explain_top: int = 3
    """Candidates recorded on the routing span."""
    seed: int | None = None
    """Seed of the random choices (random policy, softmax sampling); unset: not reproducible."""

    def validate(self) -> None:
        # Imported here: the policies themselves import these settings.
        from services.router.core.policies import POLICIES

        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        for name in ("cxl_credit", "nvme_credit"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("prefill_weight", "pending_prefill_weight", "running_weight",
                     "waiting_weight", "used_block_weight", "temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0.0 < self.busy_block_fraction <= 1.0:
            raise ValueError("busy_block_fraction must be within (0, 1]")

    def tier_credit(self, tier: str) -> float:
        """Credit of a block held by store tier ``tier``."""
        return self.cxl_credit if tier == "cxl" else self.nvme_credit
