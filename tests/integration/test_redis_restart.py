"""Redis SIGKILLed and started again on its port under streaming load, empty or with its
append-only file (persistence on): no stream fails, the router keeps routing to the workers it
knows while Redis is away, the workers register again, and the router's block index follows
the workers' KV events again."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tandem.discovery import index_key
from tandem.redis_local import PrivateRedis
from tests.integration.leaks import Baseline
from tests.integration.stream_load import StreamLoad
from tests.integration.system import InProcessSystem, start_system

OUTAGE_S = 1.0
AFTER_S = 3.0
"""Watched after Redis is back: past the workers' lease (1 s), so a router that lost them for
good would show it."""
MIN_STRETCH_S = 0.5
STREAMS_PER_STRETCH = 3
"""How long the stretches are in which streams must have started and been served after Redis
came back, in streams as long as before the outage (a slower host has longer stretches)."""


@pytest.fixture(params=[False, True], ids=["empty", "persistent"])
async def redis_server(request: pytest.FixtureRequest) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(persistent=request.param)
    yield server
    server.stop()


@pytest.fixture
async def system(redis_server: PrivateRedis) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_server.url, decode_workers=2)
    yield system
    await system.close()


async def test_redis_restarted_under_load(redis_server: PrivateRedis,
                                               system: InProcessSystem) -> None:
    warm = StreamLoad(system.http_url, clients=8)  # every channel to the workers open
    warm.start()
    await warm.served(8)
    await warm.stop()
    baseline = Baseline.take(redis_server.url)
    load = StreamLoad(system.http_url, clients=8)
    load.start()
    started = time.monotonic()
    # three waves of streams before the outage (the first, slower, opens the clients): the
    # median is the pace of one stream on this host
    await load.served(3 * load.clients)
    pace = statistics.median(o.ended - o.started for o in load.outcomes if o.ok)
    print(f"{3 * load.clients} streams served in {time.monotonic() - started:.2f} s before "
          f"the outage")
    # counted before the outage: Redis restarts off the event loop, so the index feed may
    # have resynced by the time ``back`` is taken
    resyncs_before = system.router.index_feed.resyncs
    redis_server.kill()
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(redis_server.restart)  # the system runs on meanwhile
    back = time.monotonic()
    events_before = system.router.index_feed.applied_events
    client = aioredis.Redis.from_url(redis_server.url)
    registered_after = None
    while time.monotonic() - back < AFTER_S:
        members = await client.smembers(index_key(system.namespace))
        if registered_after is None and len(members) == 2:
            registered_after = time.monotonic() - back
        await asyncio.sleep(0.05)
    await client.aclose()
    await load.stop()
    await baseline.reached(system)

    failed = load.failed()
    print(f"{len(load.outcomes)} streams, {len(failed)} failed; workers registered again "
          f"{registered_after} s after Redis came back")
    assert not failed, f"{len(failed)} of {len(load.outcomes)} failed: {failed[:3]}"
    # the workers put themselves back into the set discovery reads
    assert registered_after is not None and registered_after < 1.0, registered_after
    assert sorted(system.router.watcher.workers) == ["decode-0", "decode-1"]
    # routing went on all along: streams that started in every stretch after Redis came back
    # were served. A stretch is a few streams long, as streams took before the outage (the
    # clients start together, so a stretch shorter than a stream can miss every start).
    stretch = max(MIN_STRETCH_S, STREAMS_PER_STRETCH * pace)
    starts = [back + i * stretch for i in range(int(AFTER_S / stretch))]
    served = {round(at - back, 2): len([o for o in load.completed_after(at)
                                        if o.started < at + stretch]) for at in starts}
    print(f"a stream took {pace:.3f} s before the outage; streams started and served in each "
          f"{stretch:.2f} s after Redis came back: {served}")
    assert all(served.values()), served
    # the index follows the workers' events again, after resyncing what the outage lost
    assert system.router.index_feed.applied_events > events_before
    assert system.router.index_feed.resyncs > resyncs_before
