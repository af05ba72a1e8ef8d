"""KV-aware routing end to end: a worker's KV events reach the router's index through Redis
Streams, and requests sharing a prefix go where that prefix is cached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from tandem.v1 import router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"
SYSTEM_PROMPT = " ".join(f"rule {i}: be precise and kind." for i in range(40))


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=3)
    yield system
    await system.close()


async def explain(system: InProcessSystem, prompt: str) -> router_pb2.ExplainRouteResponse:
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).ExplainRoute(
            router_pb2.ExplainRouteRequest(model=MODEL, prompt=prompt))


async def complete(client: httpx.AsyncClient, prompt: str) -> dict[str, object]:
    reply = await client.post("/v1/completions", json={
        "model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0})
    assert reply.status_code == 200
    body: dict[str, object] = reply.json()
    return body


async def test_shared_prefix_goes_to_the_worker_that_caches_it(system: InProcessSystem) -> None:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        await complete(client, SYSTEM_PROMPT + " Question zero?")
        # The worker's "stored" events reach the router's index through its Redis stream.
        async with asyncio.timeout(10):
            while True:
                decision = await explain(system, SYSTEM_PROMPT + " Another question?")
                best = decision.candidates[0]
                if best.device_overlap_blocks > 0:
                    break
                await asyncio.sleep(0.05)
        holder = decision.decode_worker_id
        assert best.worker_id == holder
        assert best.device_overlap_blocks >= decision.prompt_blocks - 2
        assert all(c.device_overlap_blocks == 0 for c in decision.candidates[1:])
        # Requests sharing the prefix land on the holder and reuse its cache.
        for index in range(4):
            body = await complete(client, SYSTEM_PROMPT + f" Question {index}?")
            usage = body["usage"]
            assert isinstance(usage, dict)
            assert usage["prompt_tokens_details"]["cached_tokens"] >= 16 * (
                decision.prompt_blocks - 2)
    cached = {w.worker_id: len(w.engine.dump_kv_state())  # type: ignore[attr-defined]
              for w in system.workers}
    assert cached[holder] >= decision.prompt_blocks
    assert all(count == 0 for worker_id, count in cached.items() if worker_id != holder)


async def test_unrelated_prompts_spread_by_load(system: InProcessSystem) -> None:
    decision = await explain(system, "A completely different prompt with nothing cached.")
    assert len(decision.candidates) == 3
    assert all(c.device_overlap_blocks == 0 for c in decision.candidates)



async def test_routing_weights_change_at_run_time(system: InProcessSystem) -> None:
    """An operator's override in Redis reaches the running router; a bad one is refused as a
    whole and the router keeps routing as before; a reset returns to the flags."""
    import redis as sync_redis
    import redis.asyncio as aioredis

    from services.router.core.routing_overrides import routing_key
    from services.router.routing_admin import run

    prompt = " ".join(f"Nothing here is cached, line {i}." for i in range(20))

    async def prefill_costs() -> dict[str, float]:
        """Each candidate's cost less its load: prefill_weight x the uncached prompt."""
        decision = await explain(system, prompt)
        return {c.worker_id: round(c.cost - c.load, 6) for c in decision.candidates}

    async def wait_for_costs(expected: dict[str, float]) -> None:
        async with asyncio.timeout(10):
            while await prefill_costs() != expected:
                await asyncio.sleep(0.05)

    flags = await prefill_costs()  # prefill_weight 1, from the flags
    assert flags and all(cost > 0 for cost in flags.values())
    tripled = {worker: round(3 * cost, 6) for worker, cost in flags.items()}
    admin = sync_redis.Redis.from_url(system.redis_url)
    client = aioredis.Redis.from_url(system.redis_url)
    try:
        run(admin, system.namespace, "set", ["prefill_weight=3", "cxl_credit=0.25"])
        await wait_for_costs(tripled)
        assert system.router.routing.settings.cxl_credit == 0.25
        # Written around the admin's checks: refused whole, nothing changes.
        await client.hset(routing_key(system.namespace),
                          mapping={"prefill_weight": "5", "cxl_credit": "7"})
        await asyncio.sleep(0.5)  # five discovery intervals
        assert await prefill_costs() == tripled
        assert system.router.routing.settings.cxl_credit == 0.25
        run(admin, system.namespace, "reset", [])
        await wait_for_costs(flags)
        assert system.router.routing.settings.cxl_credit == 0.8  # the default again
    finally:
        admin.delete(routing_key(system.namespace))
        admin.close()
        await client.aclose()
