"""One engine worker put together (the role's service + WorkerService on one gRPC server,
the engine, the runtime), and the process entry point the decode and prefill workers share."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from tandem.engines.base import Engine
from tandem.service.grpc import WORKER_SERVICE, GrpcServer
from tandem.service.lifecycle import service_main
from tandem.tokenstream.server import TokenStreamServer
from tandem.v1 import worker_pb2_grpc
from tandem.worker.engines import build_engine
from tandem.worker.kv_events import WorkerKVEvents
from tandem.worker.runtime import DrainSwitch, WorkerRuntime
from tandem.worker.servicer import WorkerServicer
from tandem.worker.settings import WorkerSettings

AddServicer = Callable[[grpc.aio.Server], None]
"""Adds a servicer to a gRPC server (what the ``add_*Servicer_to_server`` functions do)."""

RoleServicer = Callable[[Engine, WorkerSettings], AddServicer]
"""The role's own servicer (DecodeService, PrefillService) on a worker's engine."""

RoleStream = Callable[[Engine, WorkerSettings], TokenStreamServer | None]
"""The role's token-stream server on a worker's engine (None: it serves none)."""


def worker_main(role: str, settings_type: type[WorkerSettings], argv: list[str],
                service_name: str, role_servicer: RoleServicer,
                role_stream: RoleStream | None = None) -> None:
    """Entry point of an engine worker: the kit's ``service_main`` on one worker."""
    service_main(role, settings_type, argv,
                 lambda settings: worker_runtime(role, settings, service_name, role_servicer,
                                                 role_stream=role_stream))


def worker_runtime(role: str, settings: WorkerSettings, service_name: str,
                   role_servicer: RoleServicer, engine: Engine | None = None,
                   role_stream: RoleStream | None = None) -> WorkerRuntime:
    """One engine worker put together: the engine (default: the one the settings ask for),
    its gRPC server (the role's service + WorkerService), the role's token stream if it has
    one, and the runtime that starts, registers and drains it (a kit ``Service``)."""
    engine = engine or build_engine(settings, role)
    kv_events = WorkerKVEvents(engine, settings.kv_events_batch_ms / 1000)
    drain_switch = DrainSwitch()
    server = GrpcServer(
        settings.address,
        [service_name, WORKER_SERVICE],
        [
            role_servicer(engine, settings),
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                WorkerServicer(engine, kv_events.snapshot, drain_switch.request), s),
        ],
        settings.grpc, settings.server.drain_grace_s,
    )
    stream = role_stream(engine, settings) if role_stream is not None else None
    return WorkerRuntime(role, settings, engine, server, kv_events, drain_switch, stream)
