"""Process entry helpers: uvloop, signal handling, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancels a background task and waits for it to end.

    The task's loop must also check a closing flag: a cancellation that lands inside a Redis
    command can surface as an ordinary exception (redis-py), which a resilient loop logs and
    survives; the flag ends the loop at its next turn anyway."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop)`` on uvloop; SIGTERM and SIGINT set ``stop`` so it can drain."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(wrapper())
