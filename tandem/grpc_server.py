"""gRPC server bootstrap shared by every service.

Every server gets: health checking (NOT_SERVING until the service reports a successful canary),
server reflection, keepalive and message-size limits, and a graceful drain on SIGTERM
(health flips to NOT_SERVING, new calls are refused, running calls get ``drain_grace_s``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GrpcSettings:
    """Transport settings of a gRPC server or channel."""

    max_message_bytes: int = 64 * MiB
    """Largest message sent or received (KV payload chunks stay well below)."""
    keepalive_time_ms: int = 20_000
    """Interval of keepalive pings on idle connections."""
    keepalive_timeout_ms: int = 10_000
    """Time to wait for a keepalive ack before closing the connection."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long running calls may take to finish."""

    def server_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # The C-core name of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: without it a
            # call idle for minutes (a long prefill) draws GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]


class GrpcServer:
    """A grpc.aio server with health, reflection and graceful drain."""

    def __init__(
        self,
        address: str,
        service_names: Sequence[str],
        register: Sequence[Callable[[grpc.aio.Server], None]],
        settings: GrpcSettings | None = None,
    ) -> None:
        self.settings = settings or GrpcSettings()
        self.server = grpc.aio.server(options=self.settings.server_options())
        for add in register:
            add(self.server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(address)
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
        await self.server.stop(self.settings.drain_grace_s)

