"""The queue of each pool: ``WorkerService.GetLoad`` on every worker that discovery lists (its
engine's waiting requests), summed per pool. A worker that does not answer within the timeout
counts as 0 this tick (it is starting, or leaving)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import redis.asyncio as aioredis

from services.planner.core.types import POOLS, Pool
from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.service.channels import aio_channel
from tandem.service.groups import GrpcSettings
from tandem.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


class WorkerLoads:
    """Asks every registered worker for its load; keeps one channel per worker."""

    def __init__(self, client: aioredis.Redis, namespace: str, timeout_s: float,
                 grpc_settings: GrpcSettings) -> None:
        self.watcher = WorkerWatcher(client, namespace)
        self.timeout_s = timeout_s
        self.grpc_settings = grpc_settings
        self.channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerServiceStub:
        channel = self.channels.get(address)
        if channel is None:
            channel = aio_channel(address, self.grpc_settings)
            self.channels[address] = channel
        return worker_pb2_grpc.WorkerServiceStub(channel)

    async def _waiting(self, worker: WorkerInfo) -> int:
        try:
            load = await self._stub(worker.address).GetLoad(worker_pb2.GetLoadRequest(),
                                                             timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            log.debug("no load from worker", extra={"worker": worker.worker_id,
                                                    "code": str(error.code())})
            return 0
        return int(load.waiting_requests)

    async def waiting(self) -> dict[Pool, int]:
        """Requests waiting per pool."""
        workers = list((await self.watcher.refresh()).values())
        for address in set(self.channels) - {w.address for w in workers}:
            await self.channels.pop(address).close()  # the worker left
        counts = await asyncio.gather(*(self._waiting(w) for w in workers))
        totals: dict[Pool, int] = {pool: 0 for pool in POOLS}
        for worker, count in zip(workers, counts, strict=True):
            if worker.role in totals:
                totals[worker.role] += count  # type: ignore[index]
        return totals

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()
