"""What every engine worker serves besides its role's service: WorkerService (load and KV
state), and the process wiring shared by the decode and prefill entry points."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from tandem.config import load_settings
from tandem.engines.base import Engine
from tandem.grpc_server import GrpcServer
from tandem.logs import setup_logging
from tandem.metrics_http import serve_metrics
from tandem.runtime import run
from tandem.telemetry import TelemetrySettings, setup_telemetry
from tandem.v1 import worker_pb2, worker_pb2_grpc
from tandem.worker import WorkerKVEvents, WorkerRuntime, WorkerSettings, build_engine, grpc_settings

AddServicer = Callable[[grpc.aio.Server], None]


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    """Load and KV state of the worker."""

    def __init__(self, engine: Engine,
                 kv_snapshot: Callable[[], tuple[list[bytes], int] | None]) -> None:
        self.engine = engine
        self.kv_snapshot = kv_snapshot

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


def worker_main(role: str, settings_type: type[WorkerSettings], argv: list[str],
                service_name: str, role_servicer: Callable[[Engine, WorkerSettings], AddServicer]
                ) -> None:
    """Entry point of an engine worker: settings from flags and environment, logs, telemetry,
    the engine, its gRPC server (the role's service + WorkerService), and the lifecycle."""
    settings = load_settings(settings_type, f"tandem_{role}", argv)
    setup_logging(role, settings.log_level)
    setup_telemetry(f"tandem-{role}", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))

    async def serve(stop: asyncio.Event) -> None:
        worker = worker_runtime(role, settings, service_name, role_servicer)
        if settings.metrics_port is not None:
            serve_metrics(settings.host, settings.metrics_port)
        await worker.serve(stop)

    run(serve)


def worker_runtime(role: str, settings: WorkerSettings, service_name: str,
                   role_servicer: Callable[[Engine, WorkerSettings], AddServicer],
                   engine: Engine | None = None) -> WorkerRuntime:
    """One engine worker put together: the engine (default: the one the settings ask for),
    its gRPC server (the role's service + WorkerService) and the runtime that starts,
    registers and drains it (``serve(stop)``)."""
    engine = engine or build_engine(settings, role)
    kv_events = WorkerKVEvents(engine)
    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        [service_name, "tandem.v1.WorkerService"],
        [
            role_servicer(engine, settings),
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                WorkerServicer(engine, kv_events.snapshot), s),
        ],
        grpc_settings(settings),
    )
    return WorkerRuntime(role, settings, engine, server, kv_events)
