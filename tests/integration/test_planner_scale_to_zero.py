"""Scale-to-zero end to end: a request that finds no decode worker waits at the router
(``--admission-no-worker-wait-s``) instead of failing; the planner sees it (the router's
``tandem_router_queued_requests``) and brings a worker up; the request is served once the worker
registers. Without anyone to bring a worker up, the wait ends with the documented 503."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from services.router.core.admission import AdmissionSettings
from tests.integration.system import start_decode_worker, start_router, start_system
from tests.integration.test_planner_live import decode_workers, planner_system

MODEL = "SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}
PLANNER = ("--interval-s 1 --startup-s 3 --predictor constant --scale-to-zero true --idle-s 30 "
           "--prefill-min 0 --prefill-max 0 --decode-min 1 --decode-max 1")
"""Ticks every second; scale-to-zero on; the decode pool at most 1 worker."""
WAIT_S = 90.0
"""The router's wait for a first worker: a planner tick plus a mock worker's start-up (5-20 s
on this shared machine), with room."""


async def test_the_first_request_waits_for_the_planner_to_start_a_worker(
        redis_url: str, tmp_path: Path) -> None:
    client = aioredis.from_url(redis_url, socket_connect_timeout=10, socket_timeout=10)
    with planner_system(redis_url, tmp_path, 0, PLANNER, "--no-worker-wait-s",
                        str(WAIT_S)) as (namespace, url, log):
        await asyncio.sleep(3.0)  # three planner ticks without a request: the pool stays at zero
        assert await decode_workers(client, namespace) == {}
        assert "decode-0 starting" not in log(), log()
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=WAIT_S + 30) as http:
            reply = await http.post(f"{url}/v1/chat/completions", json=CHAT)
        waited = time.monotonic() - started
        served_by = await decode_workers(client, namespace)
    await client.aclose()
    print(f"the first request was served after {waited:.1f} s (a decode worker started for "
          f"it: {served_by})")
    assert reply.status_code == 200, (reply.text, log())
    assert reply.json()["choices"][0]["message"]["content"]
    assert "decode-0 starting" in log()
    assert list(served_by) == ["decode-0"]


async def test_without_a_planner_the_wait_ends_with_a_503(redis_url: str) -> None:
    """Nobody starts a worker: the request waits ``no_worker_wait_s``, then the 503 of "no
    live decode worker" (not a hang, not earlier)."""
    system = await start_system(redis_url, decode_workers=0,
                                admission=AdmissionSettings(no_worker_wait_s=1.5))
    try:
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http:
            started = time.monotonic()
            reply = await http.post("/v1/chat/completions", json=CHAT)
            waited = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["code"] == "service_unavailable"
        assert "none came up within 1.5 s" in reply.json()["error"]["message"]
        assert 1.5 <= waited < 10, waited
    finally:
        await system.close()


async def test_a_worker_that_registers_during_the_wait_serves_the_request(
        redis_url: str) -> None:
    """The router's side alone: the waiting request is granted when a worker comes up."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    system = await start_router(redis_url, namespace, [], wait_decode=False,
                                admission=AdmissionSettings(no_worker_wait_s=20.0))
    try:
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http:
            pending = asyncio.create_task(http.post("/v1/chat/completions", json=CHAT))
            await asyncio.sleep(1.0)
            assert not pending.done()  # waiting, not refused
            system.workers.append(await start_decode_worker(redis_url, namespace, "decode-0"))
            reply = await pending
        assert reply.status_code == 200, reply.text
    finally:
        await system.close()
