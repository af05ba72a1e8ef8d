"""A worker's link to its KV store that never stops the worker from serving.

The store is a cache: a worker whose store is not up yet, or has gone away, serves anyway
(without KV save and lookup: it recomputes what it cannot load). ``StoreLink`` tries once when
started; while the store cannot be reached it retries in the background, with jittered
exponential backoff (``tandem.restart_policy.jittered_backoff``), and ``client`` is None; a call
that finds the store unreachable hands the link back to that loop (``lost``). Every change is
logged once, and ``connected`` feeds the worker's ``tandem_worker_kvstore_connected`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from tandem.kvclient.client import KVClient
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.transport import Unavailable
from tandem.restart_policy import jittered_backoff

log = logging.getLogger(__name__)

UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""gRPC codes that say the store cannot be reached (rather than that it refused the call)."""


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store cannot be reached now."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in UNREACHABLE_CODES
    return isinstance(error, OSError | Unavailable | TimeoutError)


class StoreLink:
    """One ``KVClient`` to the store at ``address``, (re)connected in the background."""

    def __init__(self, address: str, settings: KVClientSettings | None = None,
                 jitter: Callable[[], float] = random.random) -> None:
        self.address = address
        self.settings = settings or KVClientSettings()
        self.client: KVClient | None = None
        """The connected client; None while the store cannot be reached."""
        self._jitter = jitter
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def start(self) -> None:
        """Connects now if the store answers, else keeps trying in the background."""
        if self.client is None and self._task is None and not await self._try():
            self._task = asyncio.create_task(self._retry(), name="kvstore-link")

    async def lost(self, error: BaseException) -> None:
        """A call through ``client`` failed with ``error``: when it says the store cannot be
        reached, the client is dropped and the link reconnects in the background."""
        if not unreachable(error) or self.client is None:
            return
        client, self.client = self.client, None
        log.warning("KV store %s lost (%s): serving without it until it is back",
                    self.address, _brief(error))
        with contextlib.suppress(Exception):
            await client.close()
        if self._task is None:
            self._task = asyncio.create_task(self._retry(), name="kvstore-link")

    async def _try(self) -> bool:
        client = KVClient(self.address, self.settings)
        try:
            await client.connect()
        except Exception as error:
            with contextlib.suppress(Exception):
                await client.close()
            self._failures += 1
            if self._failures == 1:
                log.warning("KV store %s unreachable (%s): serving without KV save and lookup, "
                            "retrying in the background", self.address, _brief(error))
            return False
        self.client, self._failures = client, 0
        log.info("KV store %s connected", self.address, extra={"same_host": client.same_host})
        return True

    async def _retry(self) -> None:
        try:
            while True:
                await asyncio.sleep(jittered_backoff(
                    max(1, self._failures), self.settings.reconnect_base_s,
                    self.settings.reconnect_max_s, self._jitter()))
                if await self._try():
                    return
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()


def _brief(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)
