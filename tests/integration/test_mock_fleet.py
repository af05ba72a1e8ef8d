"""A simulated fleet in one process (``python -m services.decode.fleet --num-workers N``): the
router discovers all N as separate decode workers, each with its own gRPC endpoint and KV event
stream, routes to them, and sees them all leave when the process stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from tandem.kv_events import stream_key, worker_source
from tandem.v1 import router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 16
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=0)
    yield system
    await system.close()


async def candidates(system: InProcessSystem) -> list[router_pb2.RouteCandidate]:
    """The router's candidates for a prompt (none: it answers UNAVAILABLE)."""
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        try:
            reply = await router_pb2_grpc.RouterServiceStub(channel).ExplainRoute(
                router_pb2.ExplainRouteRequest(model=MODEL, prompt="hello fleet"))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return []
    return list(reply.candidates)


async def test_router_sees_every_simulated_worker(system: InProcessSystem) -> None:
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.decode.fleet", "--num-workers", str(WORKERS),
        "--redis-url", system.redis_url, "--namespace", system.namespace,
        "--worker-id", "sim", "--mock-decode-ms", "1", "--mock-speedup", "10",
        "--lease-ttl-s", "2", "--drain-grace-s", "1", "--log-level", "warning",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        async with asyncio.timeout(60):
            while len(await candidates(system)) < WORKERS:
                assert fleet.returncode is None, "the fleet process exited"
                await asyncio.sleep(0.2)
        workers = system.router.routing.decode_workers(MODEL)
        assert sorted(w.worker_id for w in workers) == sorted(
            f"sim-{n}" for n in range(WORKERS))
        assert len({w.address for w in workers}) == WORKERS
        assert all(w.engine.startswith("mock-simulated") for w in workers)
        client = aioredis.Redis.from_url(system.redis_url)
        try:
            for worker in workers:  # each announced "cleared" on its own stream at start
                key = stream_key(system.namespace, worker_source(worker.worker_id))
                assert await client.xlen(key) >= 1
        finally:
            await client.aclose()
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http:
            replies = await asyncio.gather(*(http.post("/v1/completions", json={
                "model": MODEL, "prompt": f"question {n}", "max_tokens": 3})
                for n in range(2 * WORKERS)))
        assert all(r.status_code == 200 for r in replies)
        assert {r.json()["system_fingerprint"] for r in replies} == {"mock-simulated:fixed"}
    finally:
        fleet.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(fleet.wait(), 30) == 0
    async with asyncio.timeout(10):  # a clean stop deregisters every worker at once
        while await candidates(system):
            await asyncio.sleep(0.1)
