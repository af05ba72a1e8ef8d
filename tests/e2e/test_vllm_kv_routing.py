"""KV-aware routing with the real engine: the vLLM worker's KV events (bridged from vLLM's
publisher into its Redis stream) put a served prompt's blocks in the router's index, and an
identical request goes to that worker, over an idle rival that holds nothing."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.engines.mock import MockEngine, MockSettings
from tandem.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import MODEL, RunningSystem
from tests.integration.system import start_decode_worker

pytestmark = pytest.mark.e2e

PROMPT = "Rules of the house. " + " ".join(
    f"Rule {n}: guests sign the book, keep the noise down after {n % 12 + 1} pm, and tidy "
    "the kitchen." for n in range(30))
RIVAL = "mock-kv-rival"


async def explain(system: RunningSystem) -> router_pb2.ExplainRouteResponse:
    async with grpc.aio.insecure_channel(system.router_grpc_address) as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).ExplainRoute(
            router_pb2.ExplainRouteRequest(model=MODEL, prompt=PROMPT))


async def complete(system: RunningSystem) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=system.router_http_url, timeout=120) as client:
        reply = await client.post("/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


async def vllm_worker(system: RunningSystem) -> WorkerInfo:
    client = aioredis.Redis.from_url(system.redis_url)
    try:
        workers = await WorkerWatcher(client, system.namespace).refresh()
    finally:
        await client.aclose()
    return next(w for w in workers.values()
                if w.role == "decode" and w.engine.startswith("vllm"))


async def test_served_prompt_is_indexed_and_its_repeat_goes_to_the_holder(
        running_system: RunningSystem) -> None:
    vllm = await vllm_worker(running_system)
    assert vllm.block_size > 1
    first = await complete(running_system)
    assert str(first["system_fingerprint"]).startswith("vllm")
    async with asyncio.timeout(30):
        while True:
            decision = await explain(running_system)
            overlap = {c.worker_id: c.device_overlap_blocks for c in decision.candidates}
            if overlap.get(vllm.worker_id, 0) >= decision.prompt_blocks:
                break
            await asyncio.sleep(0.1)
    assert decision.prompt_blocks >= 2
    # The worker's own snapshot (what a router resyncs from) holds those blocks too.
    async with grpc.aio.insecure_channel(vllm.address) as channel:
        state = await worker_pb2_grpc.WorkerServiceStub(channel).DumpKVState(
            worker_pb2.DumpKVStateRequest())
    assert len(state.block_hashes) >= decision.prompt_blocks
    assert state.last_event_sequence > 0

    await routed_to_holder_over_an_idle_rival(running_system, vllm, decision.prompt_blocks)


async def routed_to_holder_over_an_idle_rival(
        running_system: RunningSystem, vllm: WorkerInfo, prompt_blocks: int) -> None:
    """An idle mock decode worker with the vLLM worker's block size joins; the router still
    sends the repeat to the vLLM worker, whose cache serves it."""
    block_size = vllm.block_size
    rival = await start_decode_worker(
        running_system.redis_url, running_system.namespace, RIVAL,
        engine=MockEngine(MockSettings(model=MODEL, block_size=block_size)))
    try:
        # Both candidates present and idle (earlier tests of the session may leave the vLLM
        # worker busy for a while; busy, it rightly loses to an idle rival).
        async with asyncio.timeout(120):
            while True:
                decision = await explain(running_system)
                if len(decision.candidates) == 2 and all(
                        c.load == 0 for c in decision.candidates):
                    break
                await asyncio.sleep(0.2)
        best, other = decision.candidates
        assert (best.worker_id, other.worker_id) == (vllm.worker_id, RIVAL), decision
        assert best.device_overlap_blocks == prompt_blocks > 0
        assert other.device_overlap_blocks == 0 and best.cost < other.cost
        second = await complete(running_system)
        assert str(second["system_fingerprint"]).startswith("vllm")
        usage = second["usage"]
        assert isinstance(usage, dict)
        assert usage["prompt_tokens_details"]["cached_tokens"] >= block_size * (
            prompt_blocks - 1)
    finally:
        await rival.shutdown()
        async with asyncio.timeout(30):  # gone from the router before the next test routes
            while len((await explain(running_system)).candidates) > 1:
                await asyncio.sleep(0.1)
