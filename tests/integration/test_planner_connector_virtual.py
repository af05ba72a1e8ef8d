"""The virtual connector with real Redis: the planner publishes desired counts, an external
actuator (this test) reads them and acknowledges what it applied, and the fleet the planner
sees is the acknowledged one, not the one it asked for."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from services.planner.connectors.virtual import VirtualConnector, acknowledge, desired
from services.planner.core.types import PoolState


async def test_the_planner_plans_from_what_the_actuator_acknowledged(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    connector = VirtualConnector(client, namespace)
    await connector.start()
    assert await desired(client, namespace) is None
    assert await connector.observe() == {"prefill": PoolState(0), "decode": PoolState(0)}
    assert connector.acknowledged is None

    await connector.apply({"prefill": 2, "decode": 6}, sequence=4)
    assert await desired(client, namespace) == (4, {"prefill": 2, "decode": 6})
    # nothing acknowledged yet: the planner still sees the empty fleet
    assert await connector.observe() == {"prefill": PoolState(0), "decode": PoolState(0)}

    # the actuator applied part of it: 2 prefill serving, decode 3 serving + 2 starting
    await acknowledge(client, namespace, 4, {"prefill": PoolState(2),
                                             "decode": PoolState(3, starting=2)})
    assert await connector.observe() == {"prefill": PoolState(2),
                                         "decode": PoolState(3, starting=2)}
    assert connector.acknowledged == 4

    await connector.apply({"prefill": 1, "decode": 6}, sequence=5)  # a newer request...
    fleet = await connector.observe()
    assert fleet["prefill"] == PoolState(2)  # ...is not what the planner plans from
    assert connector.acknowledged == 4
    await connector.close()
    await client.aclose()
