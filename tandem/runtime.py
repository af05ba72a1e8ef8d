"""Process entry helpers: uvloop, signal handling, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import uvloop

log = logging.getLogger(__name__)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop)`` on uvloop; SIGTERM and SIGINT set ``stop`` so it can drain."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(wrapper())
