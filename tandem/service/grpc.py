"""The gRPC server every service runs, and the names of the services it serves.

Every server gets: health checking (NOT_SERVING until the service reports a successful canary),
server reflection, keepalive and message-size limits, and a graceful drain on SIGTERM
(health flips to NOT_SERVING, new calls are refused, running calls get ``drain_grace_s``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection

from tandem.service.groups import GrpcSettings, ServerSettings
from tandem.service.tls import server_credentials
from tandem.v1 import kvstore_pb2, planner_pb2, router_pb2, worker_pb2

log = logging.getLogger(__name__)


def _service(module: Any, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)


ROUTER_SERVICE = _service(router_pb2, "RouterService")
DECODE_SERVICE = _service(worker_pb2, "DecodeService")
PREFILL_SERVICE = _service(worker_pb2, "PrefillService")
WORKER_SERVICE = _service(worker_pb2, "WorkerService")
KVSTORE_SERVICE = _service(kvstore_pb2, "KVStoreService")
PLANNER_SERVICE = _service(planner_pb2, "PlannerService")


class GrpcServer:
    """A grpc.aio server with health, reflection and graceful drain."""

    def __init__(
        self,
        address: str,
        service_names: Sequence[str],
        register: Sequence[Callable[[grpc.aio.Server], None]],
        settings: GrpcSettings | None = None,
        drain_grace_s: float = ServerSettings.drain_grace_s,
    ) -> None:
        self.settings = settings or GrpcSettings()
        self.drain_grace_s = drain_grace_s
        self.server = grpc.aio.server(options=self.settings.server_options())
        for add in register:
            add(self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = (self.server.add_secure_port(address, server_credentials(self.settings.tls))
                     if self.settings.tls.enabled else self.server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()
        log.info("grpc server listening", extra={"address": self.address})

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Stops accepting calls and lets running ones finish within the grace period."""
        await self.set_serving(False)
        await self.server.stop(self.drain_grace_s)

    async def close(self) -> None:
        """Ends every call at once (nothing left to wait for after a drain)."""
        await self.server.stop(None)

