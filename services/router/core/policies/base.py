"""The interface of a routing policy."""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.routing_settings import RoutingSettings

if TYPE_CHECKING:
    from typing import Self

    from services.router.core.index import BlockIndex


Clock = Callable[[], float]
"""Seconds from an arbitrary origin (``time.perf_counter``): the decision reports how long its
index lookup and scoring took. Passed in, so the policies read no clock of their own."""


def no_clock() -> float:
    """The clock of a policy whose timings nobody reads (tests, offline benchmarks)."""
    return 0.0


class Policy(abc.ABC):
    """Chooses one worker for a request. ``settings`` are passed on every call so they can
    change at run time."""

    name: str
    reads_index: bool = False
    """Whether ``choose`` reads the block index: the router feeds the index from the KV event
    streams only while its policy does (the load-only policies never look at it)."""

    def __init__(self, rng: random.Random | None = None, clock: Clock = no_clock) -> None:
        self.rng = rng or random.Random()
        self.clock = clock

    @classmethod
    def build(cls, index: BlockIndex, rng: random.Random, clock: Clock = no_clock) -> Self:
        """The policy for the registry (``POLICIES``); only policies that read the block
        index keep ``index``."""
        return cls(rng, clock)

    @abc.abstractmethod
    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        """Picks among ``workers`` (at least one)."""
