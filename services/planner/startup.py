"""The measured start-up time of a worker, the planner's lead time: from the tick at which the
connector first reports a worker starting to the tick at which one more serves (so at tick
resolution), per pool, first started first served; a worker that both starts and serves between
two reports is timed from the planner's ask for it. The lead time is the longest of the latest
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
    _asked: dict[Pool, float] = dataclasses.field(default_factory=dict)

    def asked(self, now_s: float, pool: Pool) -> None:
        """The planner asked for more workers of ``pool`` at ``now_s``."""
        self._asked[pool] = now_s

    def observe(self, now_s: float, pools: Mapping[Pool, PoolState]) -> list[float]:
        """Notes a fleet report; returns the start-ups that completed since the last one."""
        done: list[float] = []
        for pool, state in pools.items():
            last = self._last.get(pool)
            pending = self._pending.setdefault(pool, collections.deque())
            if last is not None:
                served = max(0, state.ready - last.ready)
                timed = min(served, len(pending))
                for _ in range(timed):
                    done.append(now_s - pending.popleft())
                asked = self._asked.pop(pool, None) if served > timed else None
                if asked is not None:  # never seen starting: it came up within one report
                    done.extend([now_s - asked] * (served - timed))
                # a start that vanished without serving (cancelled, crashed): forget the newest
                while len(pending) > state.starting:
                    pending.pop()
            if len(pending) < state.starting:
                self._asked.pop(pool, None)  # seen starting: timed from this report
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
