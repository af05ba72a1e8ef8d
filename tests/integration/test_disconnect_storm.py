"""A disconnect storm: hundreds of streamed requests dropped by their clients at every stage
(before routing, during the remote prefill, mid-decode) leave the router, the workers and the
KV store as they were: no running request in the router (ledger, gauge), no engine request, no
pinned block or store lease, no more asyncio tasks or open fds than before."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.integration.leaks import Baseline, store_leases
from tests.integration.system import InProcessSystem, start_system
from tests.integration.test_kvstore_service import SLOT, Store

MODEL = "SmolLM2-135M-Instruct"
STREAMS = 300
AT_ONCE = 50
PREFILL_S = 0.3
"""Each prompt's remote prefill (the mock prefill worker's simulated time)."""
PROMPT_TOKENS = 120
MAX_TOKENS = 1000
"""10 s of decoding: a request the client dropped and nobody aborted would still run when the
checks below give up (RELEASED_S)."""
RELEASED_S = 1.5


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    store = Store(redis_url, "--cxl-capacity-bytes", str(1024 * SLOT))
    store.proc.start()
    try:
        yield store
    finally:
        store.cleanup()


@pytest.fixture
async def system(redis_url: str, store: Store) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=2, prefill_workers=1,
                                disaggregation="always", kvstore_address=store.proc.address,
                                decode_ms=10.0,
                                prefill_ms_per_token=PREFILL_S * 1000 / PROMPT_TOKENS)
    yield system
    await system.close()


def body(index: int) -> dict[str, object]:
    prompt = [1000 + (index * 7 + i) % 40000 for i in range(PROMPT_TOKENS)]  # all different
    return {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "stream": True}


async def dropped(client: httpx.AsyncClient, index: int, stage: str) -> str:
    """One stream, dropped at ``stage``; returns the stage it was dropped at."""
    request = asyncio.create_task(_read(client, index, stage))
    if stage == "before routing":
        await asyncio.sleep(0)
        request.cancel()
    elif stage == "during prefill":
        await asyncio.sleep(random.uniform(0.05, PREFILL_S * 0.8))
        request.cancel()
    try:
        return await request
    except asyncio.CancelledError:
        return stage


async def _read(client: httpx.AsyncClient, index: int, stage: str) -> str:
    async with client.stream("POST", "/v1/completions", json=body(index)) as reply:
        chunks = 0
        async for line in reply.aiter_lines():
            chunks += line.startswith("data: ")
            if stage == "mid-decode" and chunks >= random.randint(2, 20):
                return stage  # closes the stream: the client is gone mid-decode
    return "completed"


async def test_a_disconnect_storm_leaves_everything_at_its_baseline(
        system: InProcessSystem, store: Store, redis_url: str) -> None:
    stages = ["before routing", "during prefill", "mid-decode"]
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30,
                                 limits=httpx.Limits(max_connections=AT_ONCE)) as client:
        # warm: every channel (router → workers → store) open, as after any real traffic
        await asyncio.gather(*(client.post("/v1/completions", json={
            **body(-i), "max_tokens": 4, "stream": False}) for i in range(1, 7)))
        baseline = Baseline.take()
        prefills = [0]

        async def watch_prefills() -> None:
            while True:
                prefills[0] = max(prefills[0], system.router.ledger.running("prefill-0"))
                await asyncio.sleep(0.01)

        watching = asyncio.create_task(watch_prefills())
        seen: list[str] = []
        for wave in range(STREAMS // AT_ONCE):
            seen += await asyncio.gather(*(
                dropped(client, wave * AT_ONCE + i, stages[(wave * AT_ONCE + i) % 3])
                for i in range(AT_ONCE)))
        watching.cancel()
    await baseline.reached(system, RELEASED_S)
    for worker in system.workers:
        async with asyncio.timeout(RELEASED_S):
            while worker.engine.load().running or worker.engine.load().waiting:
                await asyncio.sleep(0.05)
    assert prefills[0] > 0, "no stream was dropped while its prompt was being prefilled"
    assert seen.count("completed") == 0, "a stream finished before it was dropped"
    assert {stage: seen.count(stage) for stage in stages} == {
        stage: STREAMS // 3 for stage in stages}
    async with asyncio.timeout(10):  # the readers' pins go with their reads or their lease
        while store.metric("tandem_kvstore_pinned_blocks") > 0:
            await asyncio.sleep(0.1)
    with redis.Redis.from_url(redis_url) as client:
        assert store_leases(client, store.namespace) == 0
