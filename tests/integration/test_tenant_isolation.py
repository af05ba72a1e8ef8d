"""Tenant isolation through the router, its index and the workers' KV events (mock engine, real
Redis, real gRPC and HTTP): a second tenant gets no device hit and no index credit on the first
tenant's prompt, the first tenant gets both on its repeat, and the second earns its own credit
with its own blocks. With API keys on, the key names the tenant (the body's ``user``, the same
label on every request, changes nothing); with keys off, ``user`` does. The real engine and
the KV store: ``tests/e2e/test_tenant_isolation.py``."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import redis

from services.router import keystore
from services.router.core.api_keys import ApiKeySettings, Limits
from tandem.v1 import router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"
CREDIT_WAIT_S = 30.0
"""How long the router's index may take to learn a worker's blocks (KV events via Redis; a
loaded machine is slow)."""
SHARED_LABEL = "one-label-for-all"
"""Every request's ``user`` with keys on: were it the tenant, both tenants would be one."""


@dataclasses.dataclass(frozen=True)
class Tenants:
    """How each tenant's requests say who they are."""

    system: InProcessSystem
    names: tuple[str, str]
    keys: dict[str, str] | None
    """Each tenant's API key (None: keys off)."""

    def headers(self, tenant: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[tenant]}"} if self.keys else {}

    def body(self, tenant: str) -> dict[str, str]:
        if self.keys is None:
            return {"user": tenant}
        return {"user": SHARED_LABEL}


@pytest.fixture(scope="module", params=["keys", "user"])
async def tenants(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Tenants]:
    keyed = request.param == "keys"
    system = await start_system(redis_url, decode_workers=2,
                                api_keys=ApiKeySettings(enabled=keyed))
    run = uuid.uuid4().hex[:8]
    names = (f"acme-{run}", f"globex-{run}")
    keys = None
    if keyed:
        with redis.Redis.from_url(redis_url) as admin:
            keys = {name: keystore.create(admin, system.namespace, name, Limits())
                    for name in names}
    yield Tenants(system, names, keys)
    await system.close()


def prompt() -> str:
    return f"[{uuid.uuid4().hex}] " + " ".join(f"clause {i}: keep it private." for i in range(30))


async def usage(tenants: Tenants, text: str, tenant: str) -> dict[str, Any]:
    """The request's usage."""
    async with httpx.AsyncClient(base_url=tenants.system.http_url, timeout=30) as client:
        reply = await client.post("/v1/completions", headers=tenants.headers(tenant), json={
            "model": MODEL, "prompt": text, "max_tokens": 2, "temperature": 0,
            **tenants.body(tenant)})
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["usage"])


async def complete(tenants: Tenants, text: str, tenant: str) -> int:
    """The request's cached prompt tokens."""
    return int((await usage(tenants, text, tenant))["prompt_tokens_details"]["cached_tokens"])


async def device_credit(tenants: Tenants, text: str, tenant: str) -> tuple[int, int]:
    """(the most leading blocks any worker is credited with, the prompt's blocks)."""
    async with grpc.aio.insecure_channel(tenants.system.grpc_address) as channel:
        decision = await router_pb2_grpc.RouterServiceStub(channel).ExplainRoute(
            router_pb2.ExplainRouteRequest(
                model=MODEL, prompt=text, tenant="" if tenants.keys else tenant),
            metadata=tuple(tenants.headers(tenant).items()))
    return max(c.device_overlap_blocks for c in decision.candidates), decision.prompt_blocks


async def credited(tenants: Tenants, text: str, tenant: str) -> int:
    async with asyncio.timeout(CREDIT_WAIT_S):
        while True:
            credit, blocks = await device_credit(tenants, text, tenant)
            if credit >= blocks:
                return blocks
            await asyncio.sleep(0.05)


async def test_a_second_tenant_gets_no_hit_and_no_credit(tenants: Tenants) -> None:
    first, second = tenants.names
    text = prompt()
    assert await complete(tenants, text, first) == 0
    blocks = await credited(tenants, text, first)
    assert blocks >= 2
    assert (await device_credit(tenants, text, second))[0] == 0
    assert await complete(tenants, text, second) == 0
    block_size = tenants.system.workers[0].engine.block_size
    again = await usage(tenants, text, first)
    # every whole block, but the engine computes at least the prompt's last token: a prompt of
    # whole blocks (1 in 16 of these random prompts) gets its last block computed again
    whole = min(blocks, (again["prompt_tokens"] - 1) // block_size)
    assert again["prompt_tokens_details"]["cached_tokens"] == whole * block_size
    assert await credited(tenants, text, second) == blocks  # its own blocks, its own credit
