"""The settings groups every service shares, declared once (flattened into each service's
flags by ``shared``): the control plane, the server's listening side, gRPC transport limits.
Telemetry's group is ``tandem.telemetry.TelemetrySettings``."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from annotated_types import Ge, Gt, Le

from tandem.service.settings import Settings
from tandem.service.tls import TlsSettings

MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ControlPlaneSettings(Settings):
    """Where the control plane lives."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis of the control plane (discovery, KV metadata and events, routing overrides)."""
    namespace: str = "tandem"
    """Prefix of every Redis key, so several systems can share one Redis."""
    redis_timeout_s: Annotated[float, Gt(0), Le(300)] = 5.0
    """How long one Redis call, or connecting, may take before it fails: a Redis that hangs
    (a paused process, a lost host without a reset) must not stall a service - a worker's drain
    would never end."""


@dataclasses.dataclass(frozen=True)
class ServerSettings(Settings):
    """How a service listens and stops."""

    host: str = "127.0.0.1"
    """Interface the service's servers bind."""
    drain_grace_s: Annotated[float, Ge(0)] = 10.0
    """On SIGTERM, how long running requests may take to finish."""


@dataclasses.dataclass(frozen=True)
class GrpcSettings(Settings):
    """Transport limits and security of gRPC servers and channels."""

    max_message_bytes: Annotated[int, Gt(0)] = 64 * MiB
    """Largest gRPC message sent or received (KV payload chunks stay well below)."""
    keepalive_time_ms: Annotated[int, Gt(0)] = 20_000
    """Interval of keepalive pings on idle gRPC connections."""
    keepalive_timeout_ms: Annotated[int, Gt(0)] = 10_000
    """Time to wait for a keepalive ack before closing the connection."""
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    """TLS/mTLS of every hop (``tandem.service.tls``): --tls-cert, --tls-key, --tls-ca,
    --tls-client-auth."""

    def server_options(self) -> list[tuple[str, int]]:
        return [
            *self._common_options(),
            # The C-core name of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: without it a
            # call idle for minutes (a long prefill) draws GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def channel_options(self) -> list[tuple[str, int]]:
        return [*self._common_options(), ("grpc.http2.max_pings_without_data", 0)]

    def _common_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
