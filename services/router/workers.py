"""Channels to the live workers and the choice among them."""

from __future__ import annotations

import itertools

import grpc

from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.grpc_server import GrpcSettings
from tandem.v1 import worker_pb2_grpc


class WorkerPool:
    """Keeps one channel per live worker and the router's own in-flight count per worker."""

    def __init__(self, watcher: WorkerWatcher, grpc_settings: GrpcSettings | None = None) -> None:
        self.watcher = watcher
        self.grpc_settings = grpc_settings or GrpcSettings()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.in_flight: dict[str, int] = {}
        self._tie_breaker = itertools.count()

    def decode_workers(self, model: str) -> list[WorkerInfo]:
        return self.watcher.of_role("decode", model)

    def models(self) -> set[str]:
        return {worker.model for worker in self.watcher.workers.values()}

    def choose_decode(self, model: str, exclude: set[str]) -> WorkerInfo | None:
        """Least in-flight requests first; ties rotate so equal workers share the load."""
        candidates = [w for w in self.decode_workers(model) if w.worker_id not in exclude]
        if not candidates:
            return None
        turn = next(self._tie_breaker)
        return min(
            candidates,
            key=lambda w: (self.in_flight.get(w.worker_id, 0),
                           (hash(w.worker_id) + turn) % len(candidates)),
        )

    def decode_stub(self, worker: WorkerInfo) -> worker_pb2_grpc.DecodeServiceStub:
        return worker_pb2_grpc.DecodeServiceStub(self._channel(worker.address))

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                address, options=self.grpc_settings.channel_options())
            self._channels[address] = channel
        return channel

    def acquire(self, worker: WorkerInfo) -> None:
        self.in_flight[worker.worker_id] = self.in_flight.get(worker.worker_id, 0) + 1

    def release(self, worker: WorkerInfo) -> None:
        self.in_flight[worker.worker_id] = self.in_flight.get(worker.worker_id, 1) - 1

    def mark_failed(self, worker: WorkerInfo) -> None:
        self.watcher.quarantine(worker.worker_id)

    async def prune(self) -> None:
        """Closes channels to workers that are gone."""
        live = {worker.address for worker in self.watcher.workers.values()}
        for address in [a for a in self._channels if a not in live]:
            await self._channels.pop(address).close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
