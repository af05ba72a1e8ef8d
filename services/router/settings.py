"""Settings of the router."""

from __future__ import annotations

import dataclasses

from services.router.core.disaggregation import DisaggregationSettings
from services.router.core.routing_settings import RoutingSettings
from tandem.model import DEFAULT_MODEL_NAME


@dataclasses.dataclass(frozen=True)
class RouterSettings:
    """Router: OpenAI-compatible HTTP API and gRPC RouterService in front of the workers.

    Every flag can also be set as TANDEM_ROUTER_<FLAG> in the environment."""

    host: str = "127.0.0.1"
    """Interface both servers bind."""
    http_port: int = 8000
    """Port of the OpenAI-compatible HTTP API (and /metrics, /health)."""
    grpc_port: int = 50050
    """Port of the gRPC RouterService (0 disables it)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis of the control plane (discovery)."""
    namespace: str = "tandem"
    """Prefix of every Redis key."""
    model_dir: str | None = None
    """Local model directory whose tokenizer and chat template the router uses (default: the
    prepared SmolLM2-135M-Instruct)."""
    served_model_name: str = DEFAULT_MODEL_NAME
    """Model name clients use."""
    max_model_len: int = 4096
    """Maximum prompt + completion tokens (must match the workers')."""
    request_timeout_s: float = 600.0
    """Deadline of one request, propagated to the workers."""
    discovery_interval_s: float = 0.5
    """How often the list of live workers is refreshed from Redis."""
    routing: RoutingSettings = dataclasses.field(default_factory=RoutingSettings)
    """The routing decision: policy, cost weights, store credits, busy thresholds, temperature
    (flags ``--routing-<field>``). The starting point: ``python -m services.router.routing_admin``
    changes them at run time for every router of the namespace."""
    kv_feed_interval_ms: float = 5.0
    """Shortest time between two reads of the KV event streams: events that arrive meanwhile
    are read together (one Redis round trip per interval instead of one per event). It bounds
    how late the index learns of a worker's new blocks (0: read every event at once)."""
    retries: int = 1
    """How many other workers to try when a worker is unreachable before any token was sent."""
    disaggregation: str = "auto"
    """Remote prefill on prefill workers: "auto" (when the uncached prompt is long enough and
    the prefill pool is not saturated), "always" (whenever a prefill worker is live), "never"."""
    min_uncached_tokens: int = 512
    """auto: remote prefill only when at least this many prompt tokens are not cached."""
    max_prefills_per_worker: int = 4
    """auto: the prefill pool is saturated when every prefill worker has this many prefills in
    flight; prompts are then prefilled on their decode worker."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest accepted HTTP request body (413 beyond)."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for traces (unset: traces are not exported)."""
    log_level: str = "info"
    """Log level."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long running requests may take to finish."""
    processes: int = 1
    """Router processes sharing the HTTP and gRPC ports (SO_REUSEPORT spreads connections over
    them), under one supervisor that restarts them. Each is a full router with its own index
    built from the KV event streams, and its own /metrics (a scrape sees one process). Above 1
    when one core is not enough for the router."""

    def disaggregation_settings(self) -> DisaggregationSettings:
        return DisaggregationSettings(
            mode=self.disaggregation, min_uncached_tokens=self.min_uncached_tokens,
            max_prefills_per_worker=self.max_prefills_per_worker)

    def validate(self) -> None:
        self.disaggregation_settings().validate()
        if self.request_timeout_s <= 0:
            raise ValueError("--request-timeout-s must be positive")
        if self.processes < 1:
            raise ValueError("--processes must be >= 1")
        if self.retries < 0:
            raise ValueError("--retries must be >= 0")
        self.routing.validate()
