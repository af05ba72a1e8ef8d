"""The scaling rules between the sizing and the decision: up at once to the need (a worker
asked for now serves after the start-up time, which the forecast already covers), down slowly
(to the largest need of the last ``scale_down_delay_s`` sized with a margin, at most
``scale_down_step`` per tick, not within ``min_lifetime_s`` of the pool's last growth, never
while one of its workers is still starting), and scale-to-zero after ``idle_s`` without a
request."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

from services.planner.core.settings import PlannerSettings
from services.planner.core.types import POOLS, Observation, Pool, PoolState


class ScaleRules:
    """The state the rules keep: past needs, last growth per pool, last request."""

    def __init__(self, settings: PlannerSettings) -> None:
        self.settings = settings
        self.history: deque[tuple[float, Mapping[Pool, int]]] = deque()
        self.last_growth: dict[Pool, float] = {pool: -math.inf for pool in POOLS}
        self.first_tick: float | None = None
        self.last_request: float | None = None

    def idle(self, observation: Observation) -> bool:
        """Scale-to-zero applies: on, and no request for ``idle_s``, or no request and no
        worker at all (a fleet at zero, e.g. started empty, stays there until a request)."""
        now = observation.now_s
        if self.first_tick is None:
            self.first_tick = now - observation.interval_s
        if observation.arrivals > 0:
            self.last_request = now
        if not self.settings.scale_to_zero:
            return False
        pools = observation.pools
        if observation.arrivals == 0 and pools and not any(p.provisioned for p in pools.values()):
            return True
        since = self.last_request if self.last_request is not None else self.first_tick
        return now - since >= self.settings.idle_s

    def floor(self, pool: Pool, idle: bool) -> int:
        """Fewest workers ``pool`` may have now."""
        low, high = self.settings.limits(pool)
        if idle:
            return 0
        return min(max(low, 1), high) if self.settings.scale_to_zero else low

    def apply(
        self,
        now: float,
        pools: Mapping[Pool, PoolState],
        up: Mapping[Pool, int],
        down: Mapping[Pool, int],
        idle: bool,
    ) -> tuple[dict[Pool, int], str]:
        """Workers wanted per pool and why: ``up`` is the need at the forecast, ``down`` the
        need at the forecast plus the margin."""
        s = self.settings
        self.history.append((now, dict(down)))
        while self.history and self.history[0][0] < now - s.scale_down_delay_s:
            self.history.popleft()
        covered = self.first_tick is not None and now - self.first_tick >= s.scale_down_delay_s
        wanted: dict[Pool, int] = {}
        reasons: list[str] = []
        for pool in POOLS:
            have = pools[pool].provisioned
            if up[pool] > have:
                wanted[pool] = up[pool]
                reasons.append(f"scale up {pool} {have}->{up[pool]}")
                continue
            target = 0 if idle else max(needs[pool] for _, needs in self.history)
            hold = self._hold(now, pool, pools[pool], covered, idle)
            if target >= have or hold:
                wanted[pool] = have
                if target < have:
                    reasons.append(f"hold {pool} at {have} ({hold})")
                continue
            wanted[pool] = max(target, have - s.scale_down_step)
            reasons.append(
                f"scale down {pool} {have}->{wanted[pool]}" + (" (idle)" if idle else "")
            )
        return wanted, "; ".join(reasons) or "steady"

    def _hold(self, now: float, pool: Pool, state: PoolState, covered: bool, idle: bool) -> str:
        """Why ``pool`` may not shrink now ("" when it may)."""
        if state.starting > 0:
            return "a scale-up is pending"
        if idle:
            return ""
        if not covered:
            return "not observed for scale_down_delay_s yet"
        if now - self.last_growth[pool] < self.settings.min_lifetime_s:
            return "min_lifetime_s since the last scale-up"
        return ""

    def commit(
        self, now: float, pools: Mapping[Pool, PoolState], desired: Mapping[Pool, int]
    ) -> None:
        """Records the decision taken (a growth restarts the pool's lifetime clock)."""
        for pool in POOLS:
            if desired[pool] > pools[pool].provisioned:
                self.last_growth[pool] = now
