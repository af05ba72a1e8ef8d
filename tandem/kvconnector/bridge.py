"""A synchronous face of the asynchronous KV-store client, for code that runs outside an event
loop (vLLM's engine core calls the connector from its own threads).

One daemon thread runs an event loop that owns one ``StoreLink`` (a ``KVClient`` connected in the
background); calls are submitted to it and waited for. The same-host arena path works as in any
other client: payloads never ride gRPC. A store that is not up yet, or has gone away, is no
error: until the link is back, a lookup finds nothing, a get loads nothing and a put stores
nothing (the engine recomputes), and the link says so in the log once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from opentelemetry.context import Context

from tandem.kvclient.client import KVClient, KVClientSettings
from tandem.kvclient.link import StoreLink
from tandem.kvclient.transport import Buffer, PutResult

T = TypeVar("T")


class StoreBridge:
    """Blocking lookup/get/put against one KV store."""

    def __init__(self, address: str, settings: KVClientSettings | None = None) -> None:
        self.address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tandem-kv-bridge",
                                        daemon=True)
        self._thread.start()
        self._link = StoreLink(address, settings)  # its channels belong to the bridge's loop
        self._run(self._link.start())

    @property
    def connected(self) -> bool:
        """Whether the store is reachable now (else calls skip it)."""
        return self._link.connected

    @property
    def same_host(self) -> bool:
        client = self._link.client
        return client is not None and client.same_host

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _call(self, call: Callable[[KVClient], Awaitable[T]], unreachable: T) -> T:
        """``call`` on the connected client, or ``unreachable`` while there is none; a call
        that fails hands the link back to reconnecting if the store went away."""
        async def run() -> T:
            client = self._link.client
            if client is None:
                return unreachable
            try:
                return await call(client)
            except Exception as error:
                await self._link.lost(error)
                raise
        return self._run(run())

    def lookup(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the chain the store holds."""
        if not hashes:
            return 0
        nothing: tuple[int, list[int]] = (0, [])
        count, _ = self._call(lambda client: client.lookup(hashes), nothing)
        return count

    def get(self, hashes: Sequence[bytes],
            into: Sequence[bytearray | memoryview] | None = None,
            context: Context | None = None) -> list[memoryview]:
        """Payloads of the leading blocks the store holds intact (shorter at the first miss);
        the client's span joins ``context`` (a request's trace)."""
        return self._call(lambda client: client.get(hashes, into, context), [])

    def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
            context: Context | None = None) -> PutResult:
        return self._call(lambda client: client.put(hashes, payloads, parent, context=context),
                          PutResult())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._link.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
