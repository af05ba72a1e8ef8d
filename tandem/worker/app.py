"""One engine worker put together (the role's service + WorkerService on one gRPC server,
the engine, the runtime), and the process entry point the decode and prefill workers share."""

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
from tandem.v1 import worker_pb2_grpc
from tandem.worker.engines import build_engine
from tandem.worker.kv_events import WorkerKVEvents
from tandem.worker.runtime import WorkerRuntime, grpc_settings
from tandem.worker.servicer import WORKER_SERVICE, WorkerServicer
from tandem.worker.settings import WorkerSettings

AddServicer = Callable[[grpc.aio.Server], None]
"""Adds a servicer to a gRPC server (what the ``add_*Servicer_to_server`` functions do)."""

RoleServicer = Callable[[Engine, WorkerSettings], AddServicer]
"""The role's own servicer (DecodeService, PrefillService) on a worker's engine."""


def worker_main(role: str, settings_type: type[WorkerSettings], argv: list[str],
                service_name: str, role_servicer: RoleServicer) -> None:
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
                   role_servicer: RoleServicer, engine: Engine | None = None) -> WorkerRuntime:
    """One engine worker put together: the engine (default: the one the settings ask for),
    its gRPC server (the role's service + WorkerService) and the runtime that starts,
    registers and drains it (``serve(stop)``)."""
    engine = engine or build_engine(settings, role)
    kv_events = WorkerKVEvents(engine)
    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        [service_name, WORKER_SERVICE],
        [
            role_servicer(engine, settings),
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                WorkerServicer(engine, kv_events.snapshot), s),
        ],
        grpc_settings(settings),
    )
    return WorkerRuntime(role, settings, engine, server, kv_events)
