"""The engine's KV events on the worker's stream, and the snapshot DumpKVState answers."""

from __future__ import annotations

import redis.asyncio as aioredis

from tandem.engines.base import Engine
from tandem.kv_events import KVEventPublisher, worker_source


class WorkerKVEvents:
    """Publishes the engine's KV events on the worker's stream and answers DumpKVState, for
    engines that report their blocks (both do: the mock engine directly, vLLM through
    ``tandem.engines.vllm_kv_events``). ``start`` runs before the engine starts, which is
    when vLLM must be told where to publish."""

    def __init__(self, engine: Engine, batch_s: float = 0.0) -> None:
        self.engine = engine
        self.batch_s = batch_s
        self.publisher: KVEventPublisher | None = None

    async def start(self, client: aioredis.Redis, namespace: str, worker_id: str) -> None:
        publisher = KVEventPublisher(client, namespace, worker_source(worker_id),
                                     batch_s=self.batch_s)
        if self.engine.set_kv_event_sink(publisher.publish):
            await publisher.start()
            self.publisher = publisher

    def snapshot(self) -> tuple[list[bytes], int] | None:
        """Every block on device and the sequence number of the last event it covers."""
        hashes = self.engine.dump_kv_state()
        if hashes is None or self.publisher is None:
            return None
        return hashes, self.publisher.last_seq

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
