"""What every connector is: the planner's hands. It applies desired worker counts per pool and
reports what the fleet has (ready, starting, draining: ``core.types.PoolState``), so the
planner plans from what is really there and never from what it asked for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from services.planner.core.types import POOLS, Pool, PoolState

__all__ = ["POOLS", "Connector", "Fleet", "Pool", "PoolState"]

Fleet = Mapping[Pool, PoolState]
"""Pool → its workers."""


class Connector(Protocol):
    """Acts on a fleet: sets each pool's worker count and reports what the fleet has."""

    name: str

    async def start(self) -> None:
        """Connects to what it drives (Redis, the Kubernetes API, the compose project)."""

    async def apply(self, desired: Mapping[Pool, int], sequence: int) -> None:
        """Asks for ``desired`` workers per pool (decision number ``sequence``); scale-down
        always drains: a worker leaves once its running requests are done."""

    async def observe(self) -> Fleet:
        """What the fleet has now, per pool."""

    async def close(self) -> None:
        """Releases what it holds."""
