"""Process entry helpers: uvloop, signal handling, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` every ``interval_s`` until closed; a failing step is logged and tried
    again at the next turn.

    Closing sets a flag as well as cancelling: a cancellation that lands inside a Redis
    command can surface as an ordinary exception (redis-py), which this loop would log and
    survive; the flag ends it at its next turn anyway."""

    def __init__(self, name: str, interval_s: float,
                 step: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self.interval_s = interval_s
        self.step = step
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.interval_s)
            try:
                await self.step()
            except Exception:
                if not self._closing:
                    log.warning("%s failed", self.name, exc_info=True)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop)`` on uvloop; SIGTERM and SIGINT set ``stop`` so it can drain."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(wrapper())
