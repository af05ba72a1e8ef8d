"""Discovery in Redis: leases, heartbeats, lapse, and a router that never uses a dead worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from tandem.discovery import Registration, WorkerInfo, WorkerWatcher, worker_key
from tandem.engines.mock import MockEngine
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.control_plane import control_plane_redis
from tandem.service.groups import ControlPlaneSettings
from tests.integration.system import start_decode_worker, start_system

MODEL = "SmolLM2-135M-Instruct"


def info(worker_id: str, address: str = "127.0.0.1:1") -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, role="decode", address=address, model=MODEL,
                      engine="mock-simulated", max_model_len=4096, block_size=16, host="h")


async def test_clean_shutdown_removes_the_worker_at_once(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t-{uuid.uuid4().hex[:6]}"
    watcher = WorkerWatcher(client, namespace)
    registration = Registration(client, info("w1"), namespace, lease_ttl_s=5)
    await registration.open()
    assert set(await watcher.refresh()) == {"w1"}
    await registration.close()
    assert await watcher.refresh() == {}
    await client.aclose()


async def test_a_crashed_worker_disappears_when_its_lease_lapses(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t-{uuid.uuid4().hex[:6]}"
    watcher = WorkerWatcher(client, namespace)
    registration = Registration(client, info("w1"), namespace, lease_ttl_s=0.6)
    await registration.open()
    assert set(await watcher.refresh()) == {"w1"}
    await asyncio.sleep(1.0)
    assert set(await watcher.refresh()) == {"w1"}  # heartbeats keep the lease alive
    await registration.heartbeat.close()  # the process "dies": no heartbeats, no deregistration
    await asyncio.sleep(0.8)
    assert await watcher.refresh() == {}
    await client.aclose()


async def test_router_skips_a_registered_but_dead_worker(redis_url: str) -> None:
    system = await start_system(redis_url, decode_workers=1)
    client = aioredis.Redis.from_url(redis_url)
    dead = Registration(client, info("dead", f"127.0.0.1:{free_port()}"), system.namespace,
                        lease_ttl_s=30)
    await dead.open()
    try:
        async with asyncio.timeout(5):
            while "dead" not in system.router.watcher.workers:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http:
            for index in range(6):
                reply = await http.post("/v1/completions", json={
                    "model": MODEL, "prompt": f"prompt {index}", "max_tokens": 2})
                assert reply.status_code == 200, reply.text
        # The dead worker was tried at most once, then quarantined while its lease is valid.
        assert "dead" not in system.router.watcher.workers
    finally:
        await dead.close()
        await client.aclose()
        await system.close()


async def test_no_worker_is_a_503(redis_url: str) -> None:
    system = await start_system(redis_url, decode_workers=0)
    try:
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http:
            reply = await http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "x"}]})
            assert reply.status_code == 503
            assert reply.json()["error"]["code"] == "service_unavailable"
            reply = await http.post("/v1/chat/completions", json={
                "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]})
            assert reply.status_code == 503
    finally:
        await system.close()


@contextlib.asynccontextmanager
async def watched_pair(lease_ttl_s: float, redis_timeout_s: float = 5.0
                       ) -> AsyncIterator[tuple[PrivateRedis, aioredis.Redis, WorkerWatcher,
                                                list[float], Registration]]:
    """A private Redis, a watcher on it with a clock set by hand (``now[0]``), and two workers
    w1, w2 registered once with ``lease_ttl_s`` and never renewed unless the test renews w1."""
    server = PrivateRedis()
    client = control_plane_redis(ControlPlaneSettings(server.url, "t",
                                                      redis_timeout_s=redis_timeout_s))
    now = [0.0]
    watcher = WorkerWatcher(client, "t", clock=lambda: now[0])
    w1 = Registration(client, info("w1"), "t", lease_ttl_s=lease_ttl_s)
    w2 = Registration(client, info("w2"), "t", lease_ttl_s=lease_ttl_s)
    try:
        await w1.open()
        await w2.open()
        await w1.heartbeat.close()
        await w2.heartbeat.close()  # renewals by hand
        assert set(await watcher.refresh()) == {"w1", "w2"}
        yield server, client, watcher, now, w1
    finally:
        await client.aclose()
        server.stop()


async def test_the_watcher_keeps_its_workers_while_redis_is_away_and_after_it_restarts(
) -> None:
    """A failed refresh changes nothing; a Redis that came back empty does not make the known
    workers vanish until their lease TTL passed (they register again within it)."""
    async with watched_pair(lease_ttl_s=2) as (server, _, watcher, now, w1):
        server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            await watcher.refresh()
        assert set(watcher.workers) == {"w1", "w2"}  # Redis away: routing goes on
        server.restart()  # empty
        assert set(await watcher.refresh()) == {"w1", "w2"}  # kept: within their lease
        await w1._renew()  # w1 registers again (set + index), w2 never does
        now[0] = 1.9
        assert set(await watcher.refresh()) == {"w1", "w2"}
        now[0] = 2.0
        assert set(await watcher.refresh()) == {"w1"}  # w2's lease would have lapsed
        assert set(await watcher.refresh()) == {"w1"}


async def test_the_watcher_keeps_its_workers_after_redis_hung_past_their_lease() -> None:
    """A paused Redis expires every lease whose TTL passed the moment it runs again: the known
    workers are kept for their lease from the first refresh that succeeds again."""
    async with watched_pair(lease_ttl_s=0.5, redis_timeout_s=0.2) as (server, client, watcher,
                                                                       now, w1):
        server.pause()
        with pytest.raises(redis.exceptions.TimeoutError):
            await watcher.refresh()
        await asyncio.sleep(0.6)  # past the leases
        server.resume()
        assert await client.exists(worker_key("t", "w1")) == 0  # lapsed while paused
        assert set(await watcher.refresh()) == {"w1", "w2"}  # kept: within their lease
        await w1._renew()  # w1 registers again, w2 never does
        now[0] = 0.49
        assert set(await watcher.refresh()) == {"w1", "w2"}
        now[0] = 0.5
        assert set(await watcher.refresh()) == {"w1"}


class _SlowStart(MockEngine):
    """A mock engine whose start waits for ``loaded`` (a model loading)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        await self.loaded.wait()
        await super().start()


async def test_a_worker_is_announced_starting_while_its_engine_loads(redis_url: str) -> None:
    """A planner counts the capacity on its way: the worker is in discovery, "starting", from
    the moment its server is up; no router sends it a request until it is "serving"."""
    system = await start_system(redis_url, decode_workers=0)
    engine = _SlowStart()
    starting = asyncio.create_task(start_decode_worker(
        redis_url, system.namespace, "late", engine=engine))
    try:
        async with asyncio.timeout(5):
            while "late" not in system.router.watcher.workers:
                await asyncio.sleep(0.02)
        assert system.router.watcher.workers["late"].state == "starting"
        assert system.router.routing.decode_workers(MODEL) == []
        assert not system.router.app.ready
        engine.loaded.set()
        worker = await starting
        system.workers.append(worker)
        async with asyncio.timeout(5):
            while system.router.watcher.workers["late"].state != "serving":
                await asyncio.sleep(0.02)
        assert [w.worker_id for w in system.router.routing.decode_workers(MODEL)] == ["late"]
        assert system.router.watcher.workers["late"].block_size == engine.block_size
    finally:
        engine.loaded.set()
        if not starting.done():
            system.workers.append(await starting)
        await system.close()
