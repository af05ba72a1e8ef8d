"""An in-process tandem system for integration tests: real Redis, real gRPC on loopback, the
real router, decode (and prefill) workers on the mock engine (so tests can look inside engines
and spans); given a KV store's address, the mock engines move their prompt blocks through it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from typing import Any

from services.decode.app import decode_servicer
from services.decode.settings import DecodeSettings
from services.prefill.app import prefill_servicer
from services.router.app import Router
from services.router.core.disaggregation import DisaggregationMode
from services.router.settings import RouterSettings
from tandem.engines.base import Engine
from tandem.model import ModelSettings
from tandem.redis_local import free_port
from tandem.service.groups import ControlPlaneSettings, ServerSettings
from tandem.service.grpc import DECODE_SERVICE, PREFILL_SERVICE, GrpcServer
from tandem.service.lifecycle import run_service
from tandem.telemetry import setup_telemetry
from tandem.worker.app import worker_runtime
from tandem.worker.runtime import WorkerRuntime
from tandem.worker.settings import MockWorkerSettings


@dataclasses.dataclass
class InProcessWorker:
    worker_id: str
    engine: Engine
    server: GrpcServer
    stop: asyncio.Event
    task: asyncio.Task[None]
    runtime: WorkerRuntime | None = None

    async def shutdown(self) -> None:
        self.stop.set()
        await self.task


async def start_decode_worker(redis_url: str, namespace: str, worker_id: str,
                              decode_ms: float = 2.0, lease_ttl_s: float = 1.0,
                              max_model_len: int = 4096, role: str = "decode",
                              engine: Engine | None = None,
                              kvstore_address: str | None = None,
                              drain_grace_s: float = 1.0,
                              prefill_ms_per_token: float = 0.05,
                              drain_notice_s: float = 0.2,
                              redis_timeout_s: float = ControlPlaneSettings.redis_timeout_s,
                              ) -> InProcessWorker:
    """A worker of ``role`` "decode" or "prefill" (same settings otherwise) on ``engine``
    (default: a mock engine built from the settings, with the KV store at
    ``kvstore_address`` when given)."""
    settings = DecodeSettings(control=ControlPlaneSettings(redis_url, namespace,
                                                           redis_timeout_s=redis_timeout_s),
                              worker_id=worker_id, engine="mock", port=0,
                              mock=MockWorkerSettings(decode_ms=decode_ms,
                                                      prefill_ms_per_token=prefill_ms_per_token),
                              lease_ttl_s=lease_ttl_s,
                              model=ModelSettings(max_model_len=max_model_len),
                              server=ServerSettings(drain_grace_s=drain_grace_s),
                              drain_notice_s=drain_notice_s,  # routers refresh every 0.1 s
                              kvstore_address=kvstore_address)
    if role == "decode":
        runtime = worker_runtime(role, settings, DECODE_SERVICE, decode_servicer, engine)
    else:
        runtime = worker_runtime(role, settings, PREFILL_SERVICE, prefill_servicer, engine)
    stop = asyncio.Event()
    runtime.drain_switch.stop = stop.set  # WorkerService.Drain stops it as SIGTERM would
    task = asyncio.create_task(run_service(runtime, stop))
    while runtime.registration is None or runtime.registration.info.state != "serving":
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return InProcessWorker(worker_id, runtime.engine, runtime.server, stop, task, runtime)


@dataclasses.dataclass
class InProcessSystem:
    redis_url: str
    namespace: str
    router: Router
    workers: list[InProcessWorker]
    stop_router: asyncio.Event
    router_task: asyncio.Task[None]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.router.http.port}"

    @property
    def grpc_address(self) -> str:
        assert self.router.grpc is not None
        return self.router.grpc.address

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not self.router.app.ready:
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.stop_router.set()
        await self.router_task
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.shutdown()


async def start_system(redis_url: str, decode_workers: int = 2, decode_ms: float = 2.0,
                       retries: int = 1, prefill_workers: int = 0,
                       disaggregation: DisaggregationMode = "auto",
                       min_uncached_tokens: int = 512,
                       kvstore_address: str | None = None,
                       max_model_len: int = ModelSettings.max_model_len,
                       lease_ttl_s: float = 1.0, drain_grace_s: float = 1.0,
                       prefill_ms_per_token: float = 0.05,
                       redis_timeout_s: float = ControlPlaneSettings.redis_timeout_s,
                       **router_settings: Any) -> InProcessSystem:
    """Returns once the router can route to a decode worker and sees every prefill worker.
    ``router_settings`` are further RouterSettings fields (``max_body_bytes=``...)."""
    setup_telemetry("tandem-test")  # real metrics, so tests can read them
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    workers = [await start_decode_worker(redis_url, namespace, f"decode-{i}", decode_ms,
                                         lease_ttl_s, max_model_len,
                                         kvstore_address=kvstore_address,
                                         drain_grace_s=drain_grace_s,
                                         redis_timeout_s=redis_timeout_s)
               for i in range(decode_workers)]
    workers += [await start_decode_worker(redis_url, namespace, f"prefill-{i}", decode_ms,
                                          lease_ttl_s, max_model_len, role="prefill",
                                          kvstore_address=kvstore_address,
                                          prefill_ms_per_token=prefill_ms_per_token,
                                          redis_timeout_s=redis_timeout_s)
                for i in range(prefill_workers)]
    return await start_router(redis_url, namespace, workers, decode_workers > 0,
                              prefill_workers, retries=retries, disaggregation=disaggregation,
                              min_uncached_tokens=min_uncached_tokens,
                              model=ModelSettings(max_model_len=max_model_len),
                              redis_timeout_s=redis_timeout_s, **router_settings)


FLEETS = ["aggregated", "disaggregated"]
"""The two paths every request parameter goes through (``start_fleet``)."""


async def start_fleet(redis_url: str, fleet: str) -> InProcessSystem:
    """One decode worker; ``"disaggregated"`` adds a prefill worker every request goes through."""
    disaggregated = fleet == "disaggregated"
    return await start_system(redis_url, decode_workers=1,
                              prefill_workers=1 if disaggregated else 0,
                              disaggregation="always" if disaggregated else "never")


async def start_router(redis_url: str, namespace: str, workers: list[InProcessWorker],
                       wait_decode: bool = True, prefill_workers: int = 0,
                       redis_timeout_s: float = ControlPlaneSettings.redis_timeout_s,
                       **settings: Any) -> InProcessSystem:
    """The router of ``namespace`` in this process (``settings``: RouterSettings fields), with
    ``workers`` (shut down with it); returns once it can route to a decode worker (with
    ``wait_decode``) and sees ``prefill_workers`` prefill workers."""
    setup_telemetry("tandem-test")  # real metrics, so tests can read them
    router = Router(RouterSettings(control=ControlPlaneSettings(redis_url, namespace,
                                                                redis_timeout_s=redis_timeout_s),
                                   http_port=0, grpc_port=free_port(),
                                   discovery_interval_s=0.1, request_timeout_s=30,
                                   **settings))
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(router, stop, canary_retry_s=0.5))
    started = asyncio.create_task(router.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        task.result()  # raises why the router did not start
    system = InProcessSystem(redis_url, namespace, router, workers, stop, task)
    try:
        if wait_decode:
            await system.wait_ready()
        async with asyncio.timeout(30):
            while sum(w.routable for w in router.watcher.of_role("prefill")) < prefill_workers:
                await asyncio.sleep(0.05)
    except BaseException:
        await system.close()
        raise
    return system
