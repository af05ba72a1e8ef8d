"""Redis paused (SIGSTOP) under streaming load: a Redis that hangs rather than one that is gone
(a stopped process, a host lost without a reset). Every Redis call then fails after
``--redis-timeout-s`` instead of waiting for ever, so the router keeps routing to the workers it
knows and a worker asked to drain still drains and stops; once Redis runs again, the workers are
in discovery again and the router routes to them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tandem.redis_local import PrivateRedis
from tests.integration.stream_load import StreamLoad
from tests.integration.system import InProcessSystem, start_system

REDIS_TIMEOUT_S = 0.5
PAUSE_S = 2.0
"""Four Redis timeouts: every service's periodic Redis work has met a hung call by then."""
STOP_BOUND_S = 5.0
"""A worker's drain and stop with Redis paused: its announcement (bounded by the 1 s lease),
the 0.2 s notice, the deregistration and the KV-event writer's last write (a Redis timeout
each); without the timeout it never ends."""


@pytest.fixture
async def redis_server() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    yield server
    server.stop()


@pytest.fixture
async def system(redis_server: PrivateRedis) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_server.url, decode_workers=2,
                                redis_timeout_s=REDIS_TIMEOUT_S)
    yield system
    redis_server.resume()  # the system's close needs it
    await system.close()


async def test_redis_paused_under_load(redis_server: PrivateRedis,
                                       system: InProcessSystem) -> None:
    load = StreamLoad(system.http_url, clients=8)
    load.start()
    await load.served(8)
    redis_server.pause()
    paused = time.monotonic()
    await asyncio.sleep(PAUSE_S)
    leaving = system.workers.pop()  # asked to drain and stop while Redis hangs
    started = time.perf_counter()
    stopping = asyncio.create_task(leaving.shutdown())
    await asyncio.wait([stopping], timeout=STOP_BOUND_S)
    stop_s = time.perf_counter() - started
    if not stopping.done():  # it finishes once Redis runs again (the fixture resumes it)
        system.workers.append(leaving)
        pytest.fail(f"a worker did not stop in {STOP_BOUND_S} s while Redis hung")
    served_while_paused = len(load.completed_after(paused))
    redis_server.resume()
    resumed = time.monotonic()
    await asyncio.sleep(2.0)
    await load.stop()

    failed = load.failed()
    print(f"{len(load.outcomes)} streams, {len(failed)} failed; {served_while_paused} completed "
          f"while Redis was paused; the leaving worker stopped in {stop_s:.2f} s")
    assert served_while_paused > 0
    assert not failed, f"{len(failed)} of {len(load.outcomes)} failed: {failed[:3]}"
    async with asyncio.timeout(5):  # the worker left is routed to again, the leaver is gone
        while sorted(system.router.watcher.workers) != ["decode-0"]:
            await asyncio.sleep(0.05)
    assert load.completed_after(resumed + 1.0)
