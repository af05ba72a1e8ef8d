"""Circuit breakers: a worker that passes its health checks (it renews its lease, answers its
canary) but fails the requests sent to it is taken out of routing, and put back once a trial
request succeeds. Pure logic: the caller passes the clock and records what happened.

One breaker per worker id:

    CLOSED --``failures`` failures within ``window_s``--> OPEN
    OPEN --``cooldown_s`` passed, the worker is routed one trial request (or probed)--> HALF_OPEN
    HALF_OPEN --the trial answered--> CLOSED
    HALF_OPEN --the trial failed--> OPEN (cool-down again)
    HALF_OPEN --the trial ended without a verdict (client gone)--> OPEN, trial due at once

A failure is a call that ended with a status that says the worker, not the request, is at
fault (the driver decides which); a success is a worker's first answer. Only a worker that
saw a failure holds a breaker, so a fleet of healthy workers costs one dict lookup per
candidate.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Annotated

from annotated_types import Ge, Gt

from tandem.service.settings import Settings


class BreakerState(enum.Enum):
    CLOSED = "closed"
    """Routed normally."""
    OPEN = "open"
    """Out of routing until its cool-down passed."""
    HALF_OPEN = "half_open"
    """One trial request is in flight; no other request is routed to it."""


@dataclasses.dataclass(frozen=True)
class BreakerSettings(Settings):
    """When a worker that fails requests is taken out of routing (flags ``--breaker-<field>``)."""

    failures: Annotated[int, Ge(0)] = 5
    """Failed calls within ``window_s`` that open a worker's breaker (0: no breaker)."""
    window_s: Annotated[float, Gt(0)] = 10.0
    """The window in which ``failures`` are counted."""
    cooldown_s: Annotated[float, Gt(0)] = 2.0
    """How long an open breaker keeps its worker out before one trial: a client request
    routed there, or the router's own probe (a one-token generation), whichever comes first."""
    probe_timeout_s: Annotated[float, Gt(0)] = 5.0
    """Deadline of a probe; one that does not answer in time counts as a failure."""


Transition = tuple[str, BreakerState, BreakerState]
"""(worker id, from, to): what changed, for the caller's log line and metric."""


@dataclasses.dataclass(slots=True)
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: collections.deque[float] = dataclasses.field(default_factory=collections.deque)
    """When the recent failures happened (those within the window), oldest first."""
    opened_at: float = 0.0


class Breakers:
    """The breakers of every worker that failed a call."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._breakers: dict[str, _Breaker] = {}

    def state(self, worker_id: str) -> BreakerState:
        breaker = self._breakers.get(worker_id)
        return BreakerState.CLOSED if breaker is None else breaker.state

    def open_workers(self) -> list[str]:
        """Workers whose breaker is not closed (out of routing, or on trial)."""
        return [w for w, b in self._breakers.items() if b.state is not BreakerState.CLOSED]

    def routable(self, worker_id: str, now: float) -> bool:
        """Whether a new request may go to the worker: closed, or open with its cool-down
        over (the request routed there is its trial: call ``routed``)."""
        breaker = self._breakers.get(worker_id)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        return (breaker.state is BreakerState.OPEN
                and now - breaker.opened_at >= self.settings.cooldown_s)

    def routed(self, worker_id: str, now: float) -> Transition | None:
        """A request was routed to the worker: an open breaker past its cool-down turns
        half-open (that request is the trial)."""
        breaker = self._breakers.get(worker_id)
        if breaker is None or breaker.state is not BreakerState.OPEN:
            return None
        if now - breaker.opened_at < self.settings.cooldown_s:
            return None
        breaker.state = BreakerState.HALF_OPEN
        return worker_id, BreakerState.OPEN, BreakerState.HALF_OPEN

    def succeeded(self, worker_id: str) -> Transition | None:
        """The worker answered a call: a trial closes the breaker."""
        breaker = self._breakers.get(worker_id)
        if breaker is None or breaker.state is BreakerState.OPEN:
            return None  # an answer to a call sent before the breaker opened proves little
        if breaker.state is BreakerState.HALF_OPEN:
            del self._breakers[worker_id]
            return worker_id, BreakerState.HALF_OPEN, BreakerState.CLOSED
        return None

    def failed(self, worker_id: str, now: float) -> Transition | None:
        """A call to the worker failed through the worker's fault."""
        if self.settings.failures == 0:
            return None
        breaker = self._breakers.get(worker_id)
        if breaker is None:
            breaker = self._breakers[worker_id] = _Breaker()
        if breaker.state is BreakerState.HALF_OPEN:
            breaker.state, breaker.opened_at = BreakerState.OPEN, now
            return worker_id, BreakerState.HALF_OPEN, BreakerState.OPEN
        if breaker.state is BreakerState.OPEN:
            return None  # calls sent before it opened keep failing: nothing changes
        failures = breaker.failures
        failures.append(now)
        while now - failures[0] > self.settings.window_s:
            failures.popleft()
        if len(failures) < self.settings.failures:
            return None
        failures.clear()
        breaker.state, breaker.opened_at = BreakerState.OPEN, now
        return worker_id, BreakerState.CLOSED, BreakerState.OPEN

    def abandoned(self, worker_id: str) -> Transition | None:
        """A call ended without saying anything about the worker (the client went away before
        it answered): a trial's breaker opens again with its cool-down over, so the next
        request is the trial."""
        breaker = self._breakers.get(worker_id)
        if breaker is None or breaker.state is not BreakerState.HALF_OPEN:
            return None
        breaker.state = BreakerState.OPEN
        breaker.opened_at -= self.settings.cooldown_s
        return worker_id, BreakerState.HALF_OPEN, BreakerState.OPEN

    def forget(self, live: set[str]) -> None:
        """Drops the breakers of workers that left discovery."""
        for worker_id in [w for w in self._breakers if w not in live]:
            del self._breakers[worker_id]
