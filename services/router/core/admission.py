"""Admission control: how much work the router lets into the fleet, and what it answers past
that. Pure logic (the caller passes durations and does the waiting).

- **Slots.** Each routable decode worker takes ``worker_slots`` requests at once, derived from
  what it announces in discovery: its batch limit (``max_num_seqs``) and its KV capacity (how
  many requests of ``request_tokens`` tokens its KV blocks hold), times ``oversubscription``
  (an engine queues a little itself; it also absorbs prompts shorter than ``request_tokens``).
  The fleet's capacity is the sum; routing keeps each worker under its own.
- **Queue.** A request that finds every slot taken waits in a FIFO queue of at most
  ``max_queue`` requests, for at most ``max_queue_wait_s`` (and never past its deadline); a
  freed slot goes to the oldest waiter.
- **Refusal.** Past the queue (full, or the wait ran out) the request is refused with a
  Retry-After: the expected time for the queue ahead of it to drain (the recent mean request
  duration x the requests ahead / the capacity), within [``retry_after_min_ms``,
  ``retry_after_max_ms``]. With no capacity at all (no routable worker) it is refused as
  unavailable, or, with ``no_worker_wait_s`` (the planner's scale-to-zero), it waits in the
  same queue for a worker to register, for at most that long (and never past its deadline).
- **Retry budget.** Calls to workers beyond a request's first (a retry on another worker after
  a failure) spend from a budget that every request tops up by ``retry_ratio`` (up to
  ``retry_reserve``), so under overload worker calls stay within (1 + ratio) x client requests
  (+ the reserve) and failures never multiply the load.

Every operation is O(1) (a waiter that gives up is skipped when its turn comes).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from typing import Annotated

from annotated_types import Ge, Gt, Interval

from tandem.service.settings import Settings


@dataclasses.dataclass(frozen=True)
class AdmissionSettings(Settings):
    """Bounds of the work in flight, the router's queue and retries (flags
    ``--admission-<field>``). The defaults only bite past what the workers can run at once."""

    oversubscription: Annotated[float, Gt(0)] = 2.0
    """A worker's slots: this many times the requests its engine runs at once (the lower of
    its batch limit and its KV blocks' worth of ``request_tokens``-token requests)."""
    request_tokens: Annotated[int, Ge(1)] = 1024
    """Prompt + completion tokens of a typical request, to turn a worker's KV capacity into
    requests."""
    default_max_num_seqs: Annotated[int, Ge(1)] = 64
    """Batch limit assumed for a worker that does not announce one."""
    max_queue: Annotated[int, Ge(0)] = 1024
    """Requests that may wait at the router for a slot (0: refuse at once when every slot is
    taken)."""
    max_queue_wait_s: Annotated[float, Ge(0)] = 2.0
    """Longest a request waits for a slot before it is refused."""
    no_worker_wait_s: Annotated[float, Ge(0)] = 0.0
    """With no routable decode worker at all, how long a request waits for one to register
    before it is refused with 503 (never past its deadline). 0: refused at once. With the
    planner's ``--scale-to-zero``, set it above the planner's interval plus a worker's start-up:
    the waiting request is the demand that brings the first worker up."""
    retry_after_min_ms: Annotated[int, Ge(0)] = 100
    """Shortest Retry-After of a refusal."""
    retry_after_max_ms: Annotated[int, Ge(0)] = 30_000
    """Longest Retry-After of a refusal."""
    retry_ratio: Annotated[float, Interval(ge=0, le=1)] = 0.1
    """Retries to other workers allowed per client request, on average (the retry budget)."""
    retry_reserve: Annotated[float, Ge(0)] = 10.0
    """Retries the budget holds at most (what a quiet router may spend on a burst of
    failures)."""

    def worker_slots(self, max_num_seqs: int, kv_blocks: int, block_size: int) -> int:
        """Requests one worker takes at once, from what it announces (0 = not announced)."""
        seqs = max_num_seqs or self.default_max_num_seqs
        if kv_blocks and block_size:
            seqs = min(seqs, max(1, kv_blocks * block_size // self.request_tokens))
        return max(1, math.ceil(seqs * self.oversubscription))


class Verdict(enum.Enum):
    ADMIT = "admit"
    """A slot is the request's: go on (and ``release`` it at the end)."""
    QUEUE = "queue"
    """Wait: ``enqueue`` a ticket; ``release`` or ``set_capacity`` grants it."""
    FULL = "queue_full"
    """Refused (429): every slot taken and the queue full."""
    NO_CAPACITY = "no_worker"
    """Refused (503): no routable worker at all (and ``no_worker_wait_s`` is 0)."""


class Ticket:
    """A request waiting for a slot. ``payload`` is the caller's (what it waits on)."""

    __slots__ = ("gone", "granted", "payload")

    def __init__(self, payload: object = None) -> None:
        self.payload = payload
        self.granted = False
        self.gone = False


class Admission:
    """The fleet's slots and the queue in front of them."""

    def __init__(self, settings: AdmissionSettings, duration_weight: float = 0.05) -> None:
        self.settings = settings
        self.capacity = 0
        """Slots of the routable decode workers (``set_capacity``)."""
        self.in_flight = 0
        self.queued = 0
        """Tickets waiting (those that gave up are not counted)."""
        self._queue: collections.deque[Ticket] = collections.deque()
        self.mean_duration_s = 1.0
        """Moving average of admitted requests' durations (for Retry-After)."""
        self._weight = duration_weight

    def admit(self) -> Verdict:
        """A new request: a slot, a place in the queue, or a refusal."""
        if self.in_flight < self.capacity and not self.queued:
            self.in_flight += 1
            return Verdict.ADMIT
        if self.capacity == 0 and not self.settings.no_worker_wait_s:
            return Verdict.NO_CAPACITY
        if self.queued >= self.settings.max_queue:
            return Verdict.FULL
        return Verdict.QUEUE

    def enqueue(self, ticket: Ticket) -> None:
        self._queue.append(ticket)
        self.queued += 1

    def give_up(self, ticket: Ticket) -> bool:
        """The waiter stopped waiting (timeout, deadline, client gone). Returns False when
        the slot had been granted already: the caller holds it and must ``release`` it."""
        if ticket.granted:
            return False
        if not ticket.gone:
            ticket.gone = True
            self.queued -= 1
        return True

    def release(self, duration_s: float) -> Ticket | None:
        """An admitted request ended after ``duration_s``: its slot goes to the oldest waiter
        (returned, already granted: wake it) or back to the pool."""
        self.mean_duration_s += self._weight * (duration_s - self.mean_duration_s)
        self.in_flight -= 1
        granted = self._grant()
        return granted[0] if granted else None

    def set_capacity(self, capacity: int) -> list[Ticket]:
        """The routable workers changed; returns the waiters granted a slot by it."""
        self.capacity = capacity
        return self._grant()

    def _grant(self) -> list[Ticket]:
        granted: list[Ticket] = []
        queue = self._queue
        while queue and self.in_flight < self.capacity:
            ticket = queue.popleft()
            if ticket.gone:
                continue
            ticket.granted = True
            self.queued -= 1
            self.in_flight += 1
            granted.append(ticket)
        while queue and queue[0].gone:  # keep the deque as short as the waiters
            queue.popleft()
        return granted

    def wait_limit_s(self) -> float:
        """Longest a request queued now may wait: for a worker when there is none, else for a
        slot."""
        s = self.settings
        return s.no_worker_wait_s if self.capacity == 0 else s.max_queue_wait_s

    def retry_after_ms(self) -> int:
        """When a refused request should come back: the queue ahead drained at the recent
        pace."""
        s = self.settings
        ahead = self.queued + 1
        estimate = self.mean_duration_s * ahead / max(1, self.capacity) * 1000
        return int(min(s.retry_after_max_ms, max(s.retry_after_min_ms, estimate)))


class RetryBudget:
    """Retries allowed so far: every request adds ``ratio``, a retry spends one."""

    __slots__ = ("balance", "ratio", "reserve")

    def __init__(self, ratio: float, reserve: float) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self.balance = reserve

    def deposit(self) -> None:
        """A client request arrived."""
        self.balance = min(self.reserve, self.balance + self.ratio)

    def spend(self) -> bool:
        """Whether one retry may go out (it is then paid for)."""
        if self.balance < 1:
            return False
        self.balance -= 1
        return True
