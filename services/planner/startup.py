"""The measured start-up time of a worker, the planner's lead time: from the tick at which the
connector first reports a worker starting to the tick at which one more serves (so at tick
resolution), per pool, first started first served. The lead time is the longest of the latest
samples of any pool: a planner that plans for the slow starts scales up early enough. Pure: the
caller passes the time and the fleet."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping

from services.planner.core.types import Pool, PoolState


@dataclasses.dataclass
class StartupClock:
    """Start-up samples from successive fleet reports."""

    samples: int = 8
    """How many recent start-ups the lead time looks at."""
    recent: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    _pending: dict[Pool, collections.deque[float]] = dataclasses.field(default_factory=dict)
    _last: dict[Pool, PoolState] = dataclasses.field(default_factory=dict)

    def observe(self, now_s: float, pools: Mapping[Pool, PoolState]) -> list[float]:
        """Notes a fleet report; returns the start-ups that completed since the last one."""
        done: list[float] = []
        for pool, state in pools.items():
            last = self._last.get(pool)
            pending = self._pending.setdefault(pool, collections.deque())
            if last is not None:
                served = max(0, state.ready - last.ready)
                for _ in range(min(served, len(pending))):
                    done.append(now_s - pending.popleft())
                # a start that vanished without serving (cancelled, crashed): forget the newest
                while len(pending) > state.starting:
                    pending.pop()
            while len(pending) < state.starting:
                pending.append(now_s)
            self._last[pool] = state
        self.recent.extend(done)
        while len(self.recent) > self.samples:
            self.recent.popleft()
        return done

    @property
    def lead_s(self) -> float | None:
        """The longest recent start-up (None before the first)."""
        return max(self.recent) if self.recent else None
