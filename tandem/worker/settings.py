"""Settings every engine worker (decode, prefill) shares."""

from __future__ import annotations

import dataclasses
import socket
import uuid

from tandem.model import DEFAULT_MODEL_NAME, default_model_dir
from tandem.worker.engines import ENGINES


@dataclasses.dataclass(frozen=True)
class MockWorkerSettings:
    """The simulated engine's knobs (``--mock-*`` flags; read only with ``--engine mock``)."""

    profile: str = ""
    """mock engine only: hardware profile (see tandem/engines/mock/profiles); empty uses the
    fixed times below."""
    speedup: float = 1.0
    """mock engine only: simulated time runs this many times faster than the wall clock."""
    decode_ms: float = 5.0
    """mock engine only, without a profile: simulated time per decode step, in ms."""
    prefill_ms_per_token: float = 0.05
    """mock engine only, without a profile: simulated prefill time per prompt token, in ms."""
    kv_block_bytes: int = 0
    """mock engine only: bytes of one KV block it writes to and reads from the KV store
    (--kvstore-address); 0: the profile's KV size per block, 4 KiB without a profile."""


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Settings shared by every engine worker."""

    host: str = "127.0.0.1"
    """Interface the gRPC server binds."""
    port: int = 0
    """gRPC port (0 picks a free one; the registered address carries the real port)."""
    advertise_host: str | None = None
    """Host other services use to reach this worker (default: the bind host)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis of the control plane (discovery, KV events)."""
    namespace: str = "tandem"
    """Prefix of every Redis key, so several systems can share one Redis."""
    worker_id: str | None = None
    """Unique worker id (default: <role>-<hostname>-<random>)."""
    engine: str = "vllm"
    """Engine adapter: "vllm" (the real engine) or "mock" (simulated, for tests and load)."""
    model_dir: str | None = None
    """Local model directory (default: the prepared SmolLM2-135M-Instruct)."""
    served_model_name: str = DEFAULT_MODEL_NAME
    """Model name clients use."""
    max_model_len: int = 4096
    """Maximum prompt + completion tokens."""
    kv_cache_gib: int = 1
    """KV cache size in GiB for the vLLM CPU build."""
    cpu_cores: str | None = None
    """CPU cores the engine binds to (e.g. "1"); unset: vLLM's choice (core 0)."""
    max_num_seqs: int = 64
    """Most requests in one engine step."""
    max_num_batched_tokens: int | None = None
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
    lease_ttl_s: float = 3.0
    """Discovery lease; a worker that stops heartbeating disappears after this long."""
    metrics_port: int | None = None
    """Port of the Prometheus /metrics endpoint (unset: not served)."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for traces (unset: traces are not exported)."""
    log_level: str = "info"
    """Log level."""
    drain_grace_s: float = 10.0
    """On SIGTERM, how long running requests may take to finish."""
    mock: MockWorkerSettings = dataclasses.field(default_factory=MockWorkerSettings)
    """The simulated engine's knobs (flattened into the --mock-* flags)."""

    def resolved_model_dir(self) -> str:
        return self.model_dir or str(default_model_dir())

    def resolved_worker_id(self, role: str) -> str:
        return self.worker_id or f"{role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be {' or '.join(ENGINES)}, not {self.engine!r}")
        if self.lease_ttl_s <= 0:
            raise ValueError("--lease-ttl-s must be positive")
