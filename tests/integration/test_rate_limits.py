"""Per-key limits at the router, shared through a real Redis, over real HTTP and gRPC on
loopback (decode workers on the mock engine): each limit refuses with 429 and OpenAI's headers,
then lets the key in again; two routers share one key's limits; a router that dies leaks no
stream slot; Redis down makes the limits fail closed or open."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from services.router import keystore
from services.router.core.api_keys import ApiKeySettings, Limits
from services.router.rate_limiter import RateLimiter, RedisOutage
from tandem.errors import RETRY_PUSHBACK_KEY
from tandem.redis_local import PrivateRedis, free_port
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_router, start_system

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
KEYS = ApiKeySettings(enabled=True, cache_ttl_s=30)


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1, decode_ms=0.5, api_keys=KEYS)
    yield system
    await system.close()


@pytest.fixture
def admin(system: InProcessSystem) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(system.redis_url)
    yield client
    client.close()


@pytest.fixture
async def client(system: InProcessSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        yield client


async def chat(client: httpx.AsyncClient, key: str, url: str = "",
               **extra: object) -> httpx.Response:
    """One chat completion with ``key`` (``url``: another router's base URL)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            **extra}
    return await client.post(url + CHAT, json=body, headers={"authorization": f"Bearer {key}"})


def assert_refused(reply: httpx.Response, limit: str) -> float:
    """A 429 of ``limit`` in OpenAI's shape; returns its Retry-After in seconds (ms
    precision)."""
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert limit in error["message"]
    ms = int(reply.headers["retry-after-ms"])
    assert int(reply.headers["retry-after"]) == max(1, -(-ms // 1000))
    return ms / 1000


async def test_requests_per_minute(client: httpx.AsyncClient, system: InProcessSystem,
                                   admin: redis.Redis) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(requests_per_minute=30))
    remaining = []
    for _ in range(30):
        reply = await chat(client, key)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-ratelimit-limit-requests"] == "30"
        assert re.fullmatch(r"[0-9.]+m?s", reply.headers["x-ratelimit-reset-requests"])
        remaining.append(int(reply.headers["x-ratelimit-remaining-requests"]))
    assert remaining[0] == 29 and remaining[-1] <= 2  # a little refilled meanwhile
    while (reply := await chat(client, key)).status_code == 200:
        pass  # what refilled while the 30 ran
    retry_after = assert_refused(reply, "requests")
    assert reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < retry_after <= 2.0  # one request refills in 2 s
    await asyncio.sleep(retry_after)
    assert (await chat(client, key)).status_code == 200


async def test_tokens_per_minute_reserve_then_refund(
    client: httpx.AsyncClient, system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(tokens_per_minute=1200))
    prompt = (await chat(client, key)).json()["usage"]["prompt_tokens"]
    await asyncio.sleep(3.0)  # refilled (20 tokens/s)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 900, "stream": True}
    async with client.stream("POST", CHAT, json=body,
                             headers={"authorization": f"Bearer {key}"}) as first:
        assert first.status_code == 200
        left = int(first.headers["x-ratelimit-remaining-tokens"])
        assert first.headers["x-ratelimit-limit-tokens"] == "1200"
        assert left == 1200 - prompt - 900  # reserved at admission: prompt + max_tokens
        # A request that needs 40 tokens more than the bucket holds (20 tokens/s): refused.
        refused = await chat(client, key, max_tokens=left - prompt + 40)
        retry_after = assert_refused(refused, "tokens")
        assert 1.0 < retry_after <= 2.0
        assert int(refused.headers["x-ratelimit-remaining-tokens"]) <= left + 20
        async for _ in first.aiter_bytes():
            pass
    await asyncio.sleep(retry_after)
    assert (await chat(client, key, max_tokens=left - prompt + 40)).status_code == 200

    # The refund: a request that stops after 2 of its 500 tokens gives 498 back.
    other = keystore.create(admin, system.namespace, "globex", Limits(tokens_per_minute=1200))
    probe = await chat(client, other, max_tokens=2, temperature=0)  # the mock's greedy tokens
    assert probe.status_code == 200, probe.text
    second_token = int(re.findall(r"tok(\d+)", probe.json()["choices"][0]["message"]
                                  ["content"])[1])
    stopped = await chat(client, other, max_tokens=500, temperature=0,
                         stop_token_ids=[second_token])
    assert stopped.json()["usage"]["completion_tokens"] == 2
    await asyncio.sleep(0.3)  # the refund is settled in the background
    after = await chat(client, other, max_tokens=1)
    left_after = int(after.headers["x-ratelimit-remaining-tokens"])
    charged = (prompt + 2) + (prompt + 2) + (prompt + 1)  # what the three used
    assert left_after >= 1200 - charged  # the 498 came back (refill only adds)
    assert left_after < 1200 - charged + 40  # ~1.5 s of refill at most


async def test_concurrent_streams(client: httpx.AsyncClient, system: InProcessSystem,
                                  admin: redis.Redis) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(concurrent_streams=1))
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 400, "stream": True}
    async with client.stream("POST", CHAT, json=body, headers=headers) as running:
        assert running.status_code == 200
        chunks = running.aiter_bytes()
        await anext(chunks)
        retry_after = assert_refused(await chat(client, key), "concurrent streams")
        assert retry_after == 1.0
        async for _ in chunks:
            pass
    await asyncio.sleep(0.2)  # the lease is given back in the background
    assert (await chat(client, key)).status_code == 200


async def test_a_dead_routers_stream_slot_lapses(
    client: httpx.AsyncClient, system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(concurrent_streams=1))
    record = await system.router.access.keys.get(key.split("-")[1])  # type: ignore[union-attr]
    assert record is not None
    # Another router takes the slot and dies: it never renews nor gives back its lease.
    settings = ApiKeySettings(enabled=True, stream_lease_s=1.0)
    dead = RateLimiter(system.router.redis, system.namespace, settings, RedisOutage("closed"))
    state, lease = await dead.admit(record, 0)
    assert state.verdict == "ok" and lease
    assert_refused(await chat(client, key), "concurrent streams")
    await asyncio.sleep(1.1)
    assert (await chat(client, key)).status_code == 200


async def test_grpc_refusal_carries_retry_pushback(system: InProcessSystem,
                                                   admin: redis.Redis) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(requests_per_minute=1))
    request = router_pb2.CompleteRequest(model=MODEL, prompt="abc",
                                         sampling=common_pb2.SamplingParams(max_tokens=1))
    auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert [r async for r in stub.Complete(request, metadata=auth)]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Complete(request, metadata=auth):
                pass
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    pushback = dict(raised.value.trailing_metadata() or ())[RETRY_PUSHBACK_KEY]
    assert 50_000 < int(pushback) <= 60_000


async def test_two_routers_share_one_keys_limits(
    system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(requests_per_minute=4))
    second = await start_router(system.redis_url, system.namespace, [], api_keys=KEYS)
    try:
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as one, \
                httpx.AsyncClient(base_url=second.http_url, timeout=30) as two:
            statuses = [(await chat(c, key)).status_code for c in (one, two, one, two)]
            assert statuses == [200] * 4
            assert_refused(await chat(one, key), "requests")
            assert_refused(await chat(two, key), "requests")
    finally:
        await second.close()


async def test_two_router_processes_share_one_keys_limits(
    system: InProcessSystem, admin: redis.Redis
) -> None:
    key = keystore.create(admin, system.namespace, "acme", Limits(requests_per_minute=4))
    ports = [free_port(), free_port()]
    routers = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.router", "--redis-url", system.redis_url,
        "--namespace", system.namespace, "--http-port", str(port), "--grpc-port", "0",
        "--api-keys-enabled", "true", "--discovery-interval-s", "0.1", "--log-level", "warning",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
        for port in ports]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            async with asyncio.timeout(240):
                for port, router in zip(ports, routers, strict=True):
                    while True:
                        assert router.returncode is None, "a router exited"
                        try:
                            health = await client.get(f"http://127.0.0.1:{port}/health")
                            if health.status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await asyncio.sleep(0.2)
            one, two = (f"http://127.0.0.1:{port}" for port in ports)
            statuses = [(await chat(client, key, url=url)).status_code
                        for url in (one, two, one, two)]
            assert statuses == [200] * 4
            assert_refused(await chat(client, key, url=one), "requests")
            assert_refused(await chat(client, key, url=two), "requests")
    finally:
        for router in routers:
            if router.returncode is None:
                router.terminate()
        for router in routers:
            await router.wait()


@pytest.mark.parametrize("policy", ["closed", "open"])
async def test_redis_down_fails_closed_or_open(policy: str, caplog: pytest.LogCaptureFixture,
                                               ) -> None:
    server = PrivateRedis()
    system = await start_system(server.url, decode_workers=1, api_keys=ApiKeySettings(
        enabled=True, cache_ttl_s=60, redis_failure=policy))  # type: ignore[arg-type]
    try:
        admin = redis.Redis.from_url(server.url)
        key = keystore.create(admin, system.namespace, "acme", Limits(requests_per_minute=100))
        unseen = keystore.create(admin, system.namespace, "acme", Limits())
        admin.close()
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
            assert (await chat(client, key)).status_code == 200  # the key is now cached
            server.kill()
            caplog.set_level(logging.WARNING, "services.router.rate_limiter")
            outage = [(await chat(client, key)) for _ in range(3)]
            if policy == "closed":
                assert [r.status_code for r in outage] == [503] * 3
                assert outage[0].headers["retry-after"] == "1"
                assert "rate limits cannot be checked" in outage[0].json()["error"]["message"]
            else:
                assert [r.status_code for r in outage] == [200] * 3
                assert "x-ratelimit-limit-requests" not in outage[0].headers
            # A key this router never read cannot be checked, whatever the policy.
            reply = await chat(client, unseen)
            assert reply.status_code == 503
            assert "API keys cannot be checked" in reply.json()["error"]["message"]
            said = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
            assert len(said) == 1, said  # once per outage
            assert f"fail {policy}" in said[0]
            server.restart()
            admin = redis.Redis.from_url(server.url)  # empty: the key is gone with it, but
            admin.close()  # this router still knows it for its cache TTL
            reply = await chat(client, key)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-ratelimit-limit-requests"] == "100"
            assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await system.close()
        server.stop()
