"""The KV store's upkeep loop stops even when its step turns the cancellation into an ordinary
exception (as redis-py can when a cancel lands mid-command)."""

from __future__ import annotations

import asyncio

from services.kvstore.maintenance import MaintenanceLoop


async def test_stop_ends_a_loop_whose_step_swallows_the_cancellation() -> None:
    entered = asyncio.Event()

    async def redis_like_step() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)  # a Redis call in flight
        except asyncio.CancelledError:
            raise ConnectionError("connection closed by the cancellation") from None

    loop = MaintenanceLoop(redis_like_step, interval_s=0.01)
    loop.start()
    await asyncio.wait_for(entered.wait(), 1.0)
    stopping = asyncio.create_task(loop.stop())
    done, _ = await asyncio.wait({stopping}, timeout=1.0)
    assert stopping in done, "stop() hung: the loop survived its cancellation"


async def test_a_failing_step_is_logged_and_the_loop_goes_on() -> None:
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    loop = MaintenanceLoop(failing, interval_s=0.01)
    loop.start()
    while calls < 3:
        await asyncio.sleep(0.01)
    await loop.stop()
