"""A synchronous face of the asynchronous KV-store client, for code that runs outside an event
loop (vLLM's engine core calls the connector from its own threads).

One daemon thread runs an event loop that owns one ``KVClient``; calls are submitted to it and
waited for. The same-host arena path works as in any other client: payloads never ride gRPC.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from opentelemetry.context import Context

from tandem.kvclient.client import KVClient, KVClientSettings
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
        self._client = self._run(self._connect(address, settings))

    @staticmethod
    async def _connect(address: str, settings: KVClientSettings | None) -> KVClient:
        client = KVClient(address, settings)  # its channels belong to the bridge's loop
        await client.connect()
        return client

    @property
    def same_host(self) -> bool:
        return self._client.same_host

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def lookup(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the chain the store holds."""
        if not hashes:
            return 0
        count, _ = self._run(self._client.lookup(hashes))
        return count

    def get(self, hashes: Sequence[bytes],
            into: Sequence[bytearray | memoryview] | None = None,
            context: Context | None = None) -> list[memoryview]:
        """Payloads of the leading blocks the store holds intact (shorter at the first miss);
        the client's span joins ``context`` (a request's trace)."""
        return self._run(self._client.get(hashes, into, context))

    def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
            context: Context | None = None) -> PutResult:
        return self._run(self._client.put(hashes, payloads, parent, context=context))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
