"""Many simulated engines in one process, each with its own KV event stream, without any
transport: for tests and in-process experiments. The deployable form, where each simulated
worker also has its own gRPC endpoint and discovery lease, is ``python -m services.decode.fleet
--num-workers N``."""

from __future__ import annotations

import dataclasses

import redis.asyncio as aioredis

from tandem.engines.mock.engine import MockEngine
from tandem.engines.mock.settings import MockSettings
from tandem.kv_events import KVEventPublisher, worker_source


@dataclasses.dataclass
class SimulatedWorker:
    worker_id: str
    engine: MockEngine
    publisher: KVEventPublisher | None


class MockFleet:
    """``num_workers`` MockEngines named ``<prefix>-<n>``; with a Redis client, each publishes
    its KV events on ``<namespace>:kv-events:worker:<id>``."""

    def __init__(
        self, num_workers: int, settings: MockSettings, prefix: str = "mock",
        client: aioredis.Redis | None = None, namespace: str = "tandem",
    ) -> None:
        if num_workers <= 0:
            raise ValueError("num_workers must be positive")
        self.workers: list[SimulatedWorker] = []
        for number in range(num_workers):
            worker_id = f"{prefix}-{number}"
            engine = MockEngine(settings)
            publisher = None
            if client is not None:
                publisher = KVEventPublisher(client, namespace, worker_source(worker_id))
                engine.set_kv_event_sink(publisher.publish)
            self.workers.append(SimulatedWorker(worker_id, engine, publisher))

    async def start(self) -> None:
        for worker in self.workers:
            if worker.publisher is not None:
                await worker.publisher.start()
            await worker.engine.start()

    def snapshot(self, worker_id: str) -> tuple[list[bytes], int]:
        """A worker's DumpKVState answer: its cached hashes and the last published seq."""
        worker = next(w for w in self.workers if w.worker_id == worker_id)
        last_seq = worker.publisher.last_seq if worker.publisher is not None else 0
        return worker.engine.dump_kv_state(), last_seq

    async def shutdown(self) -> None:
        for worker in self.workers:
            await worker.engine.shutdown()
            if worker.publisher is not None:
                await worker.publisher.close()
