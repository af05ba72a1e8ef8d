"""Settings every engine worker (decode, prefill) shares."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from tandem.model import ModelSettings
from tandem.service.groups import ControlPlaneSettings, GrpcSettings, ServerSettings
from tandem.service.settings import Settings, shared
from tandem.telemetry import TelemetrySettings

EngineName = Literal["vllm", "mock"]
"""The engines of the registry (``tandem.worker.engines.ENGINES``; a test keeps them equal)."""
DtypeChoice = Literal["auto", "bfloat16", "float32"]
"""vLLM's dtype choices (``--dtype``)."""


@dataclasses.dataclass(frozen=True)
class MockWorkerSettings(Settings):
    """The simulated engine's knobs (``--mock-*`` flags; read only with ``--engine mock``)."""

    profile: str = ""
    """mock engine only: hardware profile (see tandem/engines/mock/profiles); empty uses the
    fixed times below."""
    speedup: Annotated[float, Gt(0)] = 1.0
    """mock engine only: simulated time runs this many times faster than the wall clock."""
    decode_ms: Annotated[float, Ge(0)] = 5.0
    """mock engine only, without a profile: simulated time per decode step, in ms."""
    prefill_ms_per_token: Annotated[float, Ge(0)] = 0.05
    """mock engine only, without a profile: simulated prefill time per prompt token, in ms."""
    kv_block_bytes: Annotated[int, Ge(0)] = 0
    """mock engine only: bytes of one KV block it writes to and reads from the KV store
    (--kvstore-address); 0: the profile's KV size per block, 4 KiB without a profile."""
    max_num_seqs: Annotated[int, Ge(0)] = 0
    """mock engine only: most requests running at once (announced in discovery); 0: the
    profile's figure, 256 without a profile."""
    block_size: Annotated[int, Ge(0)] = 0
    """mock engine only: tokens per KV block; 0: the profile's figure, 16 without one."""
    num_blocks: Annotated[int, Ge(0)] = 0
    """mock engine only: KV blocks on the simulated device; 0: the profile's figure, 4096
    without one."""
    fail_rate: Annotated[float, Interval(ge=0, le=1)] = 0.0
    """mock engine only: fraction of requests that fail with an engine error (INTERNAL)
    before their first token, for fault tests: the worker still passes its canary and its
    health checks (a worker that fails requests, for the router's circuit breaker)."""


@dataclasses.dataclass(frozen=True)
class WorkerSettings(Settings):
    """Settings shared by every engine worker."""

    port: Annotated[int, Interval(ge=0, le=65535)] = 0
    """gRPC port (0 picks a free one; the registered address carries the real port)."""
    advertise_host: str | None = None
    """Host other services use to reach this worker (default: the bind host)."""
    worker_id: str | None = None
    """Unique worker id (default: <role>-<hostname>-<random>)."""
    engine: EngineName = "vllm"
    """Engine adapter: "vllm" (the real engine) or "mock" (simulated, for tests and load)."""
    model: ModelSettings = shared(ModelSettings)
    """The model this worker serves."""
    kv_cache_gib: Annotated[int, Ge(1)] = 1
    """KV cache size in GiB (the vLLM CPU build's VLLM_CPU_KVCACHE_SPACE; on a GPU, vLLM's
    kv_cache_memory_bytes per GPU)."""
    cpu_cores: str | None = None
    """CPU cores the vLLM CPU build binds to (e.g. "1"); unset: vLLM's choice (core 0). Refused
    when vLLM runs on a GPU."""
    dtype: DtypeChoice = "auto"
    """vLLM's weight, activation and KV cache dtype. "auto": float32 on a CPU without native
    bfloat16 (no AVX512-BF16 or AMX: there vLLM's bfloat16 matrix products fall back to
    PyTorch's slow path, measured on an AVX2-only core at 8.5 GFLOP/s against 68 in float32),
    else the model's dtype (tandem.engines.vllm_dtype). Every worker of a system must resolve
    to the same dtype (a KV hand-off checks the block size); float32 doubles the KV bytes per
    token."""
    max_num_seqs: Annotated[int, Ge(1)] = 64
    """Most requests in one engine step."""
    max_num_batched_tokens: Annotated[int, Ge(1)] | None = None
    """Token budget of one engine step (unset: the engine's default)."""
    kvstore_address: str | None = None
    """gRPC address of the KV store (host:port); unset: the engine keeps its KV to itself (no
    remote prefill, no prefix hits from the store)."""
    kv_host_id: str = ""
    """Host identity compared with the KV store's (its --host-id): the same id means this
    worker maps the store's arena and block files directly (same machine, shared /dev/shm and
    disk); unset: this machine's hostname. Containers on one host that share the store's IPC
    namespace and block-file volume set one id (compose does)."""
    kv_save: bool = False
    """Write every whole prompt block the engine computes to the KV store."""
    kv_lookup: bool = True
    """Ask the KV store for the prompt's blocks when a request carries no KV handle
    (opportunistic prefix hits; one Lookup round trip per request)."""
    kv_events_batch_ms: Annotated[float, Interval(ge=0, le=1000)] = 5.0
    """KV events of the engine published within this long of the first one share one Redis
    round trip (0: each write goes as soon as it can). Routers learn of new blocks this much
    later at most (their feed polls every --kv-feed-interval-ms, 5, anyway); measured on a
    mock fleet at 0 ms steps, 5 ms took a tenth off the workers' CPU per request."""
    lease_ttl_s: Annotated[float, Gt(0)] = 3.0
    """Discovery lease; a worker that stops heartbeating disappears after this long."""
    drain_notice_s: Annotated[float, Ge(0)] = 2.0
    """On a drain, how long the worker still accepts new calls after announcing "draining" in
    discovery, before its gRPC server refuses them: routers see the state at their next
    discovery refresh (--discovery-interval-s, 0.5 s, later on a loaded machine) and route to
    it until then; a call refused instead costs the request a retry, and fails it when the
    retry meets a draining worker too. The drain takes this much longer."""
    mock: MockWorkerSettings = dataclasses.field(default_factory=MockWorkerSettings)
    """The simulated engine's knobs (flattened into the --mock-* flags)."""
    control: ControlPlaneSettings = shared(ControlPlaneSettings)
    """Redis: discovery and KV events."""
    server: ServerSettings = shared(ServerSettings)
    """Interface and drain."""
    grpc: GrpcSettings = shared(GrpcSettings)
    """gRPC transport limits."""
    telemetry: TelemetrySettings = shared(TelemetrySettings)
    """Logs, traces, metrics."""

    def resolved_worker_id(self, role: str) -> str:
        return self.worker_id or f"{role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    @property
    def address(self) -> str:
        """Where the gRPC server binds (the port may be 0: the server knows the real one)."""
        return f"{self.server.host}:{self.port}"
