"""When a supervisor restarts a process that died: exponential backoff, and a limit of deaths
within a window past which it gives up. Pure: the caller passes the times of the deaths (on
any monotonic clock) and the time now; no clock, no I/O.

    policy = RestartPolicy(backoff_s=0.5, max_backoff_s=10, max_restarts=5, window_s=60)
    decide(policy, deaths=[100.0, 101.0], now=101.0)  # RestartDecision("restart", 1.0, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

Action = Literal["restart", "give_up"]


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """How a supervisor treats a process that died."""

    backoff_s: float = 0.5
    """Pause before the first restart; doubled for each further death within the window."""
    max_backoff_s: float = 10.0
    """Longest pause before a restart."""
    max_restarts: int = 5
    """Restarts allowed within ``window_s``; the next death within it gives the process up."""
    window_s: float = 60.0
    """Deaths older than this (before the latest one) no longer count."""

    def __post_init__(self) -> None:
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("need 0 <= backoff_s <= max_backoff_s")
        if self.max_restarts < 0 or self.window_s <= 0:
            raise ValueError("need max_restarts >= 0 and window_s > 0")


@dataclasses.dataclass(frozen=True)
class RestartDecision:
    """What to do about the latest death."""

    action: Action
    delay_s: float
    """With "restart": how long to wait before restarting (0: at once)."""
    recent_deaths: int
    """Deaths within the window, the latest one included."""


def recent(deaths: Sequence[float], window_s: float) -> int:
    """Deaths within ``window_s`` of the latest one (the latest included)."""
    if not deaths:
        return 0
    latest = max(deaths)
    return sum(1 for at in deaths if latest - at < window_s)


def decide(policy: RestartPolicy, deaths: Sequence[float], now: float) -> RestartDecision:
    """The decision after the latest of ``deaths`` (times the process was seen dead, any
    order, the latest last seen at or before ``now``): give up past ``max_restarts`` deaths
    within the window, else restart once ``backoff_s * 2**(n-1)`` (capped) has passed since
    the latest death, n being the deaths within the window."""
    if not deaths:
        raise ValueError("decide needs at least one death")
    count = recent(deaths, policy.window_s)
    if count > policy.max_restarts:
        return RestartDecision("give_up", 0.0, count)
    backoff = min(policy.max_backoff_s, policy.backoff_s * 2 ** (count - 1))
    return RestartDecision("restart", max(0.0, max(deaths) + backoff - now), count)


def jittered_backoff(failures: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Pause before the next try after ``failures`` failures in a row (>= 1) of a loop that
    talks to a peer: ``base_s * 2**(failures-1)`` capped at ``cap_s``, scaled by ``jitter`` (a
    random draw in [0, 1): "full jitter", so many clients do not retry in step)."""
    if failures < 1:
        raise ValueError("jittered_backoff needs failures >= 1")
    return min(cap_s, base_s * 2 ** (failures - 1)) * jitter
