"""The planner's view of each pool's queue: WorkerService.GetLoad on every worker discovery
lists (real Redis, real gRPC, in-process mock workers), summed per pool; a worker that left is
dropped with its channel."""

from __future__ import annotations

import dataclasses
import uuid

import redis.asyncio as aioredis

from services.planner.worker_loads import WorkerLoads
from tandem.service.groups import GrpcSettings
from tests.integration.system import start_decode_worker


async def test_waiting_requests_per_pool(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    workers = [await start_decode_worker(redis_url, namespace, "decode-0"),
               await start_decode_worker(redis_url, namespace, "decode-1"),
               await start_decode_worker(redis_url, namespace, "prefill-0", role="prefill")]
    for worker, waiting in zip(workers, (3, 4, 2), strict=True):
        load = worker.engine.load()
        worker.engine.load = (  # type: ignore[method-assign]
            lambda load=load, waiting=waiting: dataclasses.replace(load, waiting=waiting))
    client = aioredis.from_url(redis_url)
    loads = WorkerLoads(client, namespace, 2.0, GrpcSettings())
    try:
        assert await loads.waiting() == {"prefill": 2, "decode": 7}
        assert len(loads.channels) == 3
        await workers[1].shutdown()
        assert await loads.waiting() == {"prefill": 2, "decode": 3}
        assert len(loads.channels) == 2
    finally:
        await loads.close()
        for worker in workers:
            await worker.shutdown()
        await client.aclose()
