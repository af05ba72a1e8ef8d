"""What every engine worker (decode, prefill) shares: settings, engine construction, the
canary that gates health, registration in discovery, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis

from tandem.discovery import Registration, WorkerInfo
from tandem.engines.base import Engine, EngineRequest, Sampling
from tandem.errors import TandemError, invalid
from tandem.grpc_server import GrpcServer, GrpcSettings
from tandem.kv_events import KVEventPublisher, worker_source
from tandem.model import DEFAULT_MODEL_NAME, default_model_dir
from tandem.v1 import common_pb2
from tandem.worker_metrics import unwatch_engine, watch_engine

log = logging.getLogger(__name__)


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
    mock_profile: str = ""
    """mock engine only: hardware profile (see tandem/engines/mock/profiles); empty uses the
    fixed times below."""
    mock_speedup: float = 1.0
    """mock engine only: simulated time runs this many times faster than the wall clock."""
    mock_decode_ms: float = 5.0
    """mock engine only, without a profile: simulated time per decode step, in ms."""
    mock_prefill_ms_per_token: float = 0.05
    """mock engine only, without a profile: simulated prefill time per prompt token, in ms."""
    mock_kv_block_bytes: int = 0
    """mock engine only: bytes of one KV block it writes to and reads from the KV store
    (--kvstore-address); 0: the profile's KV size per block, 4 KiB without a profile."""

    def resolved_model_dir(self) -> str:
        return self.model_dir or str(default_model_dir())

    def resolved_worker_id(self, role: str) -> str:
        return self.worker_id or f"{role}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"

    def validate(self) -> None:
        if self.engine not in ("vllm", "mock"):
            raise ValueError(f"--engine must be vllm or mock, not {self.engine!r}")
        if self.lease_ttl_s <= 0:
            raise ValueError("--lease-ttl-s must be positive")


def build_engine(settings: WorkerSettings, role: str) -> Engine:
    """The engine adapter the settings ask for, for a worker of ``role``."""
    if settings.engine == "mock":
        from tandem.engines.mock import MockEngine, MockSettings

        return MockEngine(MockSettings(
            model=settings.served_model_name,
            profile=settings.mock_profile,
            speedup=settings.mock_speedup,
            max_model_len=settings.max_model_len,
            decode_time_per_step_s=settings.mock_decode_ms / 1000,
            prefill_time_per_token_s=settings.mock_prefill_ms_per_token / 1000,
            kvstore_address=settings.kvstore_address, kvstore_host_id=settings.kv_host_id,
            kv_block_bytes=settings.mock_kv_block_bytes,
        ))
    from tandem.engines.vllm_engine import VllmEngine, VllmSettings
    from tandem.kvconnector.settings import ConnectorSettings

    connector = None
    if settings.kvstore_address:
        connector = ConnectorSettings(
            store_address=settings.kvstore_address, model=settings.served_model_name,
            save=settings.kv_save, lookup=settings.kv_lookup,
            otlp_endpoint=settings.otlp_endpoint, service_name=f"tandem-{role}",
            host_id=settings.kv_host_id)
    return VllmEngine(VllmSettings(
        model_dir=settings.resolved_model_dir(),
        served_model_name=settings.served_model_name,
        max_model_len=settings.max_model_len,
        kv_cache_gib=settings.kv_cache_gib,
        cpu_cores=settings.cpu_cores,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        otlp_traces_endpoint=settings.otlp_endpoint,
        kv_connector=connector,
    ))


class PromptRequest(Protocol):
    """What GenerateRequest and PrefillRequest share."""

    @property
    def model(self) -> str: ...
    @property
    def prompt_token_ids(self) -> Sequence[int]: ...
    @property
    def sampling(self) -> common_pb2.SamplingParams: ...


def validate_prompt(request: PromptRequest, engine: Engine, model: str) -> None:
    """Rejects what the engine cannot serve, as a client error."""
    if request.model and request.model != model:
        raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                          f"this worker serves {model!r}, not {request.model!r}", "model")
    prompt_tokens = len(request.prompt_token_ids)
    if prompt_tokens == 0:
        raise invalid("the prompt is empty", "prompt")
    wanted = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 1
    if prompt_tokens + wanted > engine.max_model_len:
        raise TandemError(
            common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            f"{prompt_tokens} prompt tokens + {wanted} completion tokens exceed the model's "
            f"context of {engine.max_model_len} tokens", "max_tokens")


def kv_transfer_params(salt: bytes, handle: common_pb2.KVHandle | None = None,
                       save: bool | None = None) -> dict[str, Any] | None:
    """What the engine's KV connector needs for one request (None: its defaults)."""
    params: dict[str, Any] = {}
    if salt:
        params["salt"] = salt.hex()
    if handle is not None and handle.block_hashes:
        params["block_hashes"] = [h.hex() for h in handle.block_hashes]
        params["num_tokens"] = handle.num_tokens
    if save is not None:
        params["save"] = save
    return params or None


async def canary(engine: Engine) -> None:
    """One real generation through the engine; health turns SERVING only after it succeeds."""
    request = EngineRequest(
        request_id=f"canary-{uuid.uuid4().hex[:8]}",
        prompt_token_ids=[1, 2, 3, 4],
        sampling=Sampling(max_tokens=1, temperature=0.0, ignore_eos=True),
    )
    produced = 0
    async for output in engine.generate(request):
        produced += len(output.token_ids)
    if produced != 1:
        raise RuntimeError(f"canary produced {produced} tokens instead of 1")


class WorkerKVEvents:
    """Publishes the engine's KV events on the worker's stream and answers DumpKVState, for
    engines that report their blocks (both do: the mock engine directly, vLLM through
    ``tandem.engines.vllm_kv_events``). ``start`` runs before the engine starts, which is
    when vLLM must be told where to publish."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.publisher: KVEventPublisher | None = None

    async def start(self, client: aioredis.Redis, namespace: str, worker_id: str) -> None:
        publisher = KVEventPublisher(client, namespace, worker_source(worker_id))
        if self.engine.set_kv_event_sink(publisher.publish):
            await publisher.start()
            self.publisher = publisher

    def snapshot(self) -> tuple[list[bytes], int] | None:
        """Every block on device and the sequence number of the last event it covers."""
        hashes = self.engine.dump_kv_state()
        if hashes is None or self.publisher is None:
            return None
        return hashes, self.publisher.last_seq

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()


class WorkerRuntime:
    """Runs a worker's lifecycle: engine start → canary → SERVING + lease → drain."""

    def __init__(self, role: str, settings: WorkerSettings, engine: Engine,
                 server: GrpcServer, kv_events: WorkerKVEvents | None = None) -> None:
        self.role = role
        self.kv_events = kv_events or WorkerKVEvents(engine)
        self.settings = settings
        self.engine = engine
        self.server = server
        self.worker_id = settings.resolved_worker_id(role)
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.registration: Registration | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        await self.server.start()
        log.info("starting engine", extra={"engine": self.settings.engine, "pid": os.getpid()})
        await self.kv_events.start(self.redis, self.settings.namespace, self.worker_id)
        await self.engine.start()
        await canary(self.engine)
        info = WorkerInfo(
            worker_id=self.worker_id,
            role=self.role,
            address=f"{self.settings.advertise_host or self.settings.host}:{self.server.port}",
            model=self.settings.served_model_name,
            engine=self.engine.fingerprint,
            max_model_len=self.engine.max_model_len,
            block_size=self.engine.block_size,
            host=socket.gethostname(),
        )
        self.registration = Registration(
            self.redis, info, self.settings.namespace, self.settings.lease_ttl_s
        )
        await self.registration.open()
        watch_engine(self.worker_id, self.role, self.engine.load)
        await self.server.set_serving(True)
        log.info("worker serving", extra={"worker_id": self.worker_id, "address": info.address})
        await stop.wait()
        log.info("draining", extra={"worker_id": self.worker_id})
        await self.registration.close()
        unwatch_engine(self.worker_id)
        await self.server.drain()
        await self.engine.shutdown()
        await self.kv_events.close()
        await self.redis.aclose()


def grpc_settings(settings: WorkerSettings) -> GrpcSettings:
    return GrpcSettings(drain_grace_s=settings.drain_grace_s)
