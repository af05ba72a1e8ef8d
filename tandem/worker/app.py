"""One engine worker put together (the role's service + WorkerService on one gRPC server,
the engine, the runtime), and the process entry point the decode and prefill workers share."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

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

SettingsT = TypeVar("SettingsT", bound=WorkerSettings)


@dataclasses.dataclass(frozen=True)
class RoleServing:
    """What a role serves on a worker's engine."""

    add_servicer: AddServicer
    """Adds the role's service (DecodeService, PrefillService) to the worker's gRPC server."""
    stream: TokenStreamServer | None = None
    """The role's framed token stream beside gRPC, on the same servicer (None: none)."""


RoleServicer = Callable[[Engine, SettingsT], RoleServing]
"""What the role serves on a worker's engine, given the worker's settings."""


def worker_main(role: str, settings_type: type[SettingsT], argv: list[str],
                service_name: str, role_servicer: RoleServicer[SettingsT]) -> None:
    """Entry point of an engine worker: the kit's ``service_main`` on one worker."""
    service_main(role, settings_type, argv,
                 lambda settings: worker_runtime(role, settings, service_name, role_servicer))


def worker_runtime(role: str, settings: SettingsT, service_name: str,
                   role_servicer: RoleServicer[SettingsT],
                   engine: Engine | None = None) -> WorkerRuntime:
    """One engine worker put together: the engine (default: the one the settings ask for),
    its gRPC server (the role's service + WorkerService), the role's token stream if it has
    one, and the runtime that starts, registers and drains it (a kit ``Service``)."""
    engine = engine or build_engine(settings, role)
    kv_events = WorkerKVEvents(engine, settings.kv_events_batch_ms / 1000)
    drain_switch = DrainSwitch()
    serving = role_servicer(engine, settings)
    server = GrpcServer(
        settings.address,
        [service_name, WORKER_SERVICE],
        [
            serving.add_servicer,
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                WorkerServicer(engine, kv_events.snapshot, drain_switch.request), s),
        ],
        settings.grpc, settings.server.drain_grace_s,
    )
    return WorkerRuntime(role, settings, engine, server, kv_events, drain_switch,
                         serving.stream)
