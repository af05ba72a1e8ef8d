"""The interface of a routing policy."""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.routing_settings import RoutingSettings

if TYPE_CHECKING:
    from typing import Self

    from services.router.core.index import BlockIndex


class Policy(abc.ABC):
    """Chooses one worker for a request. ``settings`` are passed on every call so they can
    change at run time."""

    name: str

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    @classmethod
    def build(cls, index: BlockIndex, rng: random.Random) -> Self:
        """The policy for the registry (``POLICIES``); only policies that read the block
        index keep ``index``."""
        return cls(rng)

    @abc.abstractmethod
    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        """Picks among ``workers`` (at least one)."""
