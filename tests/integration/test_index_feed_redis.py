"""The router's block index feed across a Redis restart: reads are retried, and once they work
again every worker is resynced from its snapshot (a Redis that restarted empty lost the events
not read yet; a lost tail shows no gap until the worker's next event)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from services.router.core.index import BlockIndex
from services.router.index_feed import IndexFeed, Snapshot
from tandem.redis_local import PrivateRedis


async def test_every_worker_is_resynced_once_redis_is_back() -> None:
    server = PrivateRedis()
    client = aioredis.Redis.from_url(server.url)
    dumps: list[tuple[str, float]] = []

    async def dump_state(worker_id: str) -> Snapshot:
        dumps.append((worker_id, time.monotonic()))
        return [b"\x01" * 16], 0

    feed = IndexFeed(client, "t", BlockIndex(), dump_state, block_ms=100, resync_retry_s=0.2)
    feed.set_workers(["w1", "w2"])
    await feed.start()
    try:
        await asyncio.sleep(0.3)
        assert not dumps  # no gap, no resync
        server.kill()
        await asyncio.sleep(0.5)
        server.restart()
        back = time.monotonic()
        while len({worker for worker, _ in dumps}) < 2:
            assert time.monotonic() - back < 2.0, f"not resynced: {dumps}"
            await asyncio.sleep(0.02)
        assert feed.resyncs == 2
        assert feed.index.blocks_of("worker:w1") == 1  # the snapshot is in the index
    finally:
        await feed.close()
        await client.aclose()
        server.stop()
