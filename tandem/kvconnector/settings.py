"""How an engine's KV connector reaches the KV store and what it moves."""

from __future__ import annotations

import dataclasses
from typing import Any

from tandem.hashing import hash_salt
from tandem.kvclient.client import KVClientSettings
from tandem.service.tls import TlsSettings

CONNECTOR_MODULE = "tandem.kvconnector.connector"
CONNECTOR_CLASS = "TandemConnector"
TRANSFER_PARAMS_KEY = "tandem"
"""Key of tandem's entry in a request's ``kv_transfer_params`` (vLLM passes the dict through).
Besides what the worker sets (``tandem.worker.kv_params.kv_transfer_params``), the engine
adapter adds ``request_id`` (tandem's, without vLLM's suffix) and ``trace`` (the request's W3C
trace headers), so the connector's transfers join the request's trace and its latency breakdown."""


@dataclasses.dataclass(frozen=True)
class ConnectorSettings:
    """Settings of the KV connector inside one engine (carried in vLLM's
    ``kv_connector_extra_config``, so they must stay JSON-friendly)."""

    store_address: str
    """gRPC address of the KV store (host:port)."""
    model: str
    """Served model name: the root of the block hash chain (with adapter and tenant empty),
    the same salt the router uses."""
    save: bool = False
    """Write every whole prompt block this engine computes to the store (prefill workers do;
    a request's own ``save`` entry overrides it)."""
    load: bool = True
    """Load prompt blocks the store holds instead of computing them."""
    lookup: bool = True
    """Without a KV handle, ask the store how much of the prompt it holds (an opportunistic
    prefix hit costs one Lookup round trip per scheduled request)."""
    timeout_s: float = 30.0
    """Deadline of one store call."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for the spans of the engine core's transfers (the worker's
    ``--otlp-endpoint``); unset: they are not exported."""
    host_id: str = ""
    """Host identity compared with the store's (the worker's --kv-host-id; unset: hostname)."""
    tls_cert: str = ""
    """The worker's --tls-cert (the store's calls over TLS); empty: plaintext."""
    tls_key: str = ""
    """The worker's --tls-key."""
    tls_ca: str = ""
    """The worker's --tls-ca."""
    tls_server_name: str = ""
    """The worker's --tls-server-name."""
    service_name: str = "tandem-engine"
    """``service.name`` of those spans (the worker's); a process forked from the worker keeps
    the worker's own."""

    def salt(self) -> bytes:
        return hash_salt(self.model)

    def client_settings(self) -> KVClientSettings:
        return KVClientSettings(timeout_s=self.timeout_s, host_id=self.host_id,
                                tls=TlsSettings(self.tls_cert, self.tls_key, self.tls_ca,
                                                server_name=self.tls_server_name))

    def to_extra_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_extra_config(cls, extra: dict[str, Any]) -> ConnectorSettings:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(extra) - names
        if unknown:
            raise ValueError(f"unknown tandem connector settings: {sorted(unknown)}")
        return cls(**extra)
