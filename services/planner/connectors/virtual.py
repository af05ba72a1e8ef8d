"""The virtual connector: the planner only publishes. It writes the desired count of each pool
to Redis (``<ns>:planner:desired``); an external actuator (an operator's script, a cloud
autoscaler, a test) applies it and acknowledges what it applied (``<ns>:planner:applied``);
the planner plans from what is acknowledged, never from what it asked for.

Both hashes hold ``sequence`` (the decision number), ``at`` (Unix time) and one field per
pool; the acknowledgement may add ``<pool>:starting`` and ``<pool>:draining``. ``desired``
and ``acknowledge`` are the actuator's side.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from services.planner.connectors.base import POOLS, Fleet, Pool, PoolState


def desired_key(namespace: str) -> str:
    return f"{namespace}:planner:desired"


def applied_key(namespace: str) -> str:
    return f"{namespace}:planner:applied"


def _fields(counts: Mapping[Pool, int], sequence: int) -> dict[str, str]:
    return {"sequence": str(sequence), "at": repr(time.time()),
            **{pool: str(count) for pool, count in counts.items()}}


def _decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}


async def desired(client: aioredis.Redis, namespace: str) -> tuple[int, dict[str, int]] | None:
    """The actuator's read: the latest decision's sequence and counts (None before one)."""
    fields = _decode(await client.hgetall(desired_key(namespace)))  # type: ignore[misc]
    if "sequence" not in fields:
        return None
    return int(fields["sequence"]), {pool: int(fields[pool]) for pool in POOLS if pool in fields}


async def acknowledge(client: aioredis.Redis, namespace: str, sequence: int,
                      applied: Mapping[Pool, PoolState]) -> None:
    """The actuator's answer: what it runs now, after applying decision ``sequence``."""
    fields = _fields({pool: count.ready for pool, count in applied.items()}, sequence)
    for pool, count in applied.items():
        fields[f"{pool}:starting"] = str(count.starting)
        fields[f"{pool}:draining"] = str(count.draining)
    await client.hset(applied_key(namespace), mapping=fields)  # type: ignore[misc,arg-type]


class VirtualConnector:
    """Publishes decisions to Redis; reads the fleet from the actuator's acknowledgement."""

    name = "virtual"

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.acknowledged: int | None = None
        """Sequence of the latest decision the actuator acknowledged (None: none yet)."""

    async def start(self) -> None:
        await self.client.ping()  # type: ignore[misc]

    async def apply(self, desired: Mapping[Pool, int], sequence: int) -> None:
        await self.client.hset(desired_key(self.namespace),  # type: ignore[misc]
                               mapping=_fields(desired, sequence))  # type: ignore[arg-type]

    async def observe(self) -> Fleet:
        fields = _decode(await self.client.hgetall(applied_key(self.namespace)))  # type: ignore[misc]
        self.acknowledged = int(fields["sequence"]) if "sequence" in fields else None
        return {pool: PoolState(ready=int(fields.get(pool, 0)),
                                starting=int(fields.get(f"{pool}:starting", 0)),
                                draining=int(fields.get(f"{pool}:draining", 0)))
                for pool in POOLS}

    async def close(self) -> None:
        pass
