"""Settings of the router."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from services.router.core.admission import AdmissionSettings
from services.router.core.api_keys import ApiKeySettings
from services.router.core.breaker import BreakerSettings
from services.router.core.disaggregation import DisaggregationMode, DisaggregationSettings
from services.router.core.routing_settings import RoutingSettings
from tandem.model import ModelSettings
from tandem.service.groups import ControlPlaneSettings, GrpcSettings, ServerSettings
from tandem.service.settings import Settings, shared
from tandem.telemetry import TelemetrySettings

Port = Annotated[int, Interval(ge=0, le=65535)]
ToolCallParserName = Literal["none", "hermes"]
"""vLLM tool-call parsers (``ToolParserManager`` names) the router offers for ``auto``."""


@dataclasses.dataclass(frozen=True)
class RouterSettings(Settings):
    """Router: OpenAI-compatible HTTP API and gRPC RouterService in front of the workers.

    Every flag can also be set as TANDEM_ROUTER_<FLAG> in the environment."""

    http_port: Port = 8000
    """Port of the OpenAI-compatible HTTP API (and /metrics, /health)."""
    grpc_port: Port = 50050
    """Port of the gRPC RouterService (0 disables it)."""
    model: ModelSettings = shared(ModelSettings)
    """The model: its tokenizer and chat template, its name, its context."""
    request_timeout_s: Annotated[float, Gt(0)] = 600.0
    """Deadline of a request whose client sets none, and the longest one a client may set
    (the ``x-request-timeout`` header in seconds, or the gRPC deadline): it travels with every
    call to the workers, which abort the engine request when it passes."""
    discovery_interval_s: Annotated[float, Gt(0)] = 0.5
    """How often the list of live workers is refreshed from Redis."""
    routing: RoutingSettings = dataclasses.field(default_factory=RoutingSettings)
    """The routing decision: policy, cost weights, store credits, busy thresholds, temperature
    (flags ``--routing-<field>``). The starting point: ``python -m services.router.routing_admin``
    changes them at run time for every router of the namespace."""
    kv_feed_interval_ms: Annotated[float, Ge(0)] = 5.0
    """Shortest time between two reads of the KV event streams: events that arrive meanwhile
    are read together (one Redis round trip per interval instead of one per event). It bounds
    how late the index learns of a worker's new blocks (0: read every event at once)."""
    retries: Annotated[int, Ge(0)] = 1
    """How many other workers to try when a worker is unreachable, or fails through its own
    fault, before any token was sent (within the retry budget, ``--admission-retry-ratio``)."""
    admission: AdmissionSettings = dataclasses.field(default_factory=AdmissionSettings)
    """Admission control (flags ``--admission-<field>``): slots per worker from what it
    announces, the router's queue in front of them, Retry-After, the retry budget."""
    breaker: BreakerSettings = dataclasses.field(default_factory=BreakerSettings)
    """Circuit breakers (flags ``--breaker-<field>``): a worker that fails this many calls
    within the window is out of routing until a trial request after the cool-down succeeds."""
    api_keys: ApiKeySettings = dataclasses.field(default_factory=ApiKeySettings)
    """API keys and per-key limits (flags ``--api-keys-<field>``; off by default):
    ``--api-keys-enabled true`` requires a key on every call but /health and /metrics, takes
    the tenant from it, and applies its limits, shared by every router through Redis."""
    max_migrations: Annotated[int, Ge(0)] = 2
    """How many times one stream may move to another decode worker after its worker was lost
    once tokens had reached the client (the new worker resumes from the prompt plus the tokens
    sent; 0 disables migration). Past it, or with no other worker live, the stream ends with
    an error event. Requests with stop strings are not migrated: the lost worker held back the
    text that could begin one."""
    disaggregation: DisaggregationMode = "auto"
    """Remote prefill on prefill workers: "auto" (when the uncached prompt is long enough and
    the prefill pool is not saturated), "always" (whenever a prefill worker is live), "never"."""
    min_uncached_tokens: Annotated[int, Ge(0)] = 512
    """auto: remote prefill only when at least this many prompt tokens are not cached."""
    max_prefills_per_worker: Annotated[int, Ge(1)] = 4
    """auto: the prefill pool is saturated when every prefill worker has this many prefills in
    flight; prompts are then prefilled on their decode worker."""
    token_stream: bool = True
    """Call a decode worker's Generate over its framed token stream when it announces one
    (``tandem.tokenstream``: the same messages without HTTP/2, less CPU per token); false:
    always gRPC."""
    token_stream_idle_connections: Annotated[int, Ge(0)] = 256
    """Idle token-stream connections kept per decode worker for the next calls."""
    max_body_bytes: Annotated[int, Gt(0)] = 8 * 1024 * 1024
    """Largest accepted HTTP request body (413 beyond)."""
    processes: Annotated[int, Ge(1)] = 1
    """Router processes sharing the HTTP and gRPC ports (SO_REUSEPORT spreads connections over
    them), under one supervisor that restarts them. Each is a full router with its own index
    built from the KV event streams, and its own /metrics (a scrape sees one process). Above 1
    when one core is not enough for the router."""
    tool_call_parser: ToolCallParserName = "hermes"
    """vLLM's tool-call parser reading the calls of ``tool_choice: "auto"`` requests (the
    default with tools); it must match the format the tools template asks for. "none": auto is
    refused with a 400 (required and named tool choices work with any model)."""
    tool_chat_template: str = ""
    """Chat template (a Jinja file) rendering the tools of ``auto`` requests. Empty: the
    model's own template where it renders tools, else, for the default model, the Hermes-format
    template shipped in services/router/chat_templates/smollm2_tools.jinja (a model directory
    that tandem.model prepared); another model whose
    template renders no tools has auto refused with a 400."""
    tool_parser_preload: bool = False
    """Load vLLM's tool-call parser when the router starts (importing vllm: 14 s, 585 MB here);
    otherwise the first auto request loads it and waits for it."""
    control: ControlPlaneSettings = shared(ControlPlaneSettings)
    """Redis: discovery, KV events, routing overrides."""
    server: ServerSettings = shared(ServerSettings)
    """Interface both servers bind, and the drain."""
    grpc: GrpcSettings = shared(GrpcSettings)
    """gRPC transport limits (RouterService and the channels to the workers)."""
    telemetry: TelemetrySettings = shared(TelemetrySettings)
    """Logs, traces, metrics."""

    def disaggregation_settings(self) -> DisaggregationSettings:
        return DisaggregationSettings(
            mode=self.disaggregation, min_uncached_tokens=self.min_uncached_tokens,
            max_prefills_per_worker=self.max_prefills_per_worker)
