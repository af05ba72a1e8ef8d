"""The store's upkeep loop: runs a step every ``interval_s``, and at once when woken (after a
commit, which may have pushed a tier past its high watermark)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

INTERVAL_S = 0.2
"""Longest wait between two steps."""


class MaintenanceLoop:
    def __init__(self, step: Callable[[], Awaitable[None]], interval_s: float = INTERVAL_S) -> None:
        self.step, self.interval_s = step, interval_s
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Ends the loop: by a flag as well as a cancel, since a cancellation that lands inside
        a Redis call can surface as an ordinary exception, which the loop logs and survives."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                await self.step()
            except Exception:
                if self._closing:
                    break
                log.exception("kvstore maintenance failed")
