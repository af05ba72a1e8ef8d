"""WorkerService over gRPC: the load and KV state every engine worker reports besides its
role's own service, and the drain the planner asks for."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from tandem.engines.base import Engine
from tandem.v1 import worker_pb2, worker_pb2_grpc


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Load and KV state of the worker."""

    def __init__(self, engine: Engine,
                 kv_snapshot: Callable[[], tuple[list[bytes], int] | None],
                 request_drain: Callable[[], bool] | None = None) -> None:
        self.engine = engine
        self.kv_snapshot = kv_snapshot
        self.request_drain = request_drain
        """Sets off the worker's drain; returns whether it was draining already."""

    async def GetLoad(
        self, request: worker_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetLoadResponse:
        load = self.engine.load()
        return worker_pb2.GetLoadResponse(
            running_requests=load.running, waiting_requests=load.waiting,
            used_kv_blocks=load.used_blocks, total_kv_blocks=load.total_blocks,
            block_size=load.block_size)

    async def DumpKVState(
        self, request: worker_pb2.DumpKVStateRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DumpKVStateResponse:
        snapshot = self.kv_snapshot()
        if snapshot is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"{self.engine.fingerprint} does not report its KV blocks")
            raise AssertionError("unreachable")  # context.abort raises
        hashes, sequence = snapshot
        return worker_pb2.DumpKVStateResponse(block_hashes=hashes, last_event_sequence=sequence)

    async def Drain(
        self, request: worker_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.DrainResponse:
        if self.request_drain is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this worker cannot be drained")
            raise AssertionError("unreachable")  # context.abort raises
        running = self.engine.load().running
        return worker_pb2.DrainResponse(already_draining=self.request_drain(),
                                        running_requests=running)
