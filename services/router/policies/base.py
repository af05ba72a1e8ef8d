"""The interface of a routing policy."""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence

from services.router.decision import RouteDecision, RouteQuery, WorkerState
from services.router.routing_settings import RoutingSettings


class Policy(abc.ABC):
    """Chooses one worker for a request. ``settings`` are passed on every call so they can
    change at run time."""

    name: str

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    @abc.abstractmethod
    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        """Picks among ``workers`` (at least one)."""
