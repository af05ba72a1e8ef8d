"""A worker's link to its KV store that never stops the worker from serving.

The store is a cache: a worker whose store is not up yet, or has gone away, serves anyway
(without KV save and lookup: it recomputes what it cannot load). ``StoreLink`` tries once when
started; while the store cannot be reached it retries in the background, with jittered
exponential backoff (``tandem.restart_policy.jittered_backoff``), and ``client`` is None; a call
that finds the store unreachable hands the link back to that loop (``lost``), and calls skip the
store until it answers again. Every change is
logged once, and ``connected`` feeds the worker's ``tandem_worker_kvstore_connected`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import grpc

from tandem.kvclient.client import KVClient, StoreInfo
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.transport import Unavailable
from tandem.restart_policy import jittered_backoff
from tandem.v1 import kvstore_pb2

log = logging.getLogger(__name__)

UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""gRPC codes that say the store cannot be reached (rather than that it refused the call)."""


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the store cannot be reached now."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code() in UNREACHABLE_CODES
    return isinstance(error, OSError | Unavailable | TimeoutError)


class StoreLink:
    """One ``KVClient`` to the store at ``address``, (re)connected in the background.

    A lost store does not close the client: calls in flight may still use it (its arena
    mapping, its channels), and its channels reconnect by themselves. The background loop asks
    the store to describe itself until it answers; a store that comes back as it was serves
    through the same client, one that comes back changed (another arena, data plane or host)
    gets a new client, and the old one is closed once every call through it has ended or
    timed out (``timeout_s`` later), or with the link: a store restarted again and again does
    not pile up channels, sockets and mappings."""

    def __init__(self, address: str, settings: KVClientSettings | None = None,
                 jitter: Callable[[], float] = random.random) -> None:
        self.address = address
        self.settings = settings or KVClientSettings()
        self._client: KVClient | None = None
        self._up = False
        self._retired: list[KVClient] = []
        self._retiring: set[asyncio.Task[None]] = set()
        self._jitter = jitter
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    @property
    def client(self) -> KVClient | None:
        """The connected client; None while the store cannot be reached."""
        return self._client if self._up else None

    @property
    def connected(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Connects now if the store answers, else keeps trying in the background (created in
        the event loop that makes the calls: the client's channels belong to it)."""
        if self._client is None:
            self._client = KVClient(self.address, self.settings)
        if not self._up and self._task is None and not await self._try():
            self._task = asyncio.create_task(self._retry(), name="kvstore-link")

    async def lost(self, error: BaseException) -> None:
        """A call through ``client`` failed with ``error``: when it says the store cannot be
        reached, calls skip the store until the background loop reaches it again."""
        if not unreachable(error) or not self._up:
            return
        self._up = False
        log.warning("KV store %s lost (%s): serving without it until it is back",
                    self.address, _brief(error))
        if self._task is None:
            self._task = asyncio.create_task(self._retry(), name="kvstore-link")

    async def _try(self) -> bool:
        client = self._client
        assert client is not None
        try:
            if client.info is None:
                await client.connect()
            else:
                reply = await client.stub.Describe(kvstore_pb2.DescribeRequest(),
                                                   timeout=self.settings.timeout_s)
                if not _same_store(client.info, reply):
                    fresh = KVClient(self.address, self.settings)
                    await fresh.connect()
                    self._retire(client)
                    self._client = client = fresh
        except Exception as error:
            self._failures += 1
            if self._failures == 1:
                log.warning("KV store %s unreachable (%s): serving without KV save and lookup, "
                            "retrying in the background", self.address, _brief(error))
            return False
        self._up, self._failures = True, 0
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

    def _retire(self, client: KVClient) -> None:
        self._retired.append(client)
        task = asyncio.create_task(self._close_retired(client), name="kvstore-link-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_retired(self, client: KVClient) -> None:
        await asyncio.sleep(self.settings.timeout_s)  # every call through it is over
        self._retired.remove(client)
        with contextlib.suppress(Exception):
            await client.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._up = False
        clients, self._retired = [*self._retired, self._client], []
        self._client = None
        for client in clients:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()


def _same_store(info: StoreInfo, reply: kvstore_pb2.DescribeResponse) -> bool:
    """Whether the store describes itself as it did when the client connected (the client's
    route, arena mapping and data plane still hold)."""
    return (info.host, info.slot_bytes, info.data_port, info.data_host, info.tiers) == \
        (reply.host, reply.slot_bytes, reply.data_port, reply.data_host, list(reply.tiers))


def _brief(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)
