"""The router's composition root: its parts, wired (``Router``), and ``main`` (``python -m
services.router --help``)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis.asyncio as aioredis
from tandem.config import load_settings
from tandem.grpc_server import GrpcServer, GrpcSettings
from tandem.runtime import run

from services.router.api.grpc_api import ROUTER_SERVICE, RouterServicer
from services.router.api.http_api import OpenAIApp
from services.router.api.server import HttpServer
from services.router.core.in_flight import InFlightLedger
from services.router.core.index import BlockIndex
from services.router.core.request import GenerationRequest
from services.router.generation import Generator
from services.router.index_feed import IndexFeed, grpc_dump_state
from services.router.metrics import RouterMetrics
from services.router.processes import (
    Supervisor,
    child_command,
    report_started,
    reserve_port,
)
from services.router.prompts import PromptBuilder
from services.router.routing import RouteChooser
from services.router.routing_watch import RoutingWatch
from services.router.settings import RouterSettings
from services.router.worker_clients import WorkerClients
from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.engines.base import Sampling
from tandem.logs import setup_logging
from tandem.model import default_model_dir
from tandem.telemetry import TelemetrySettings, setup_telemetry
from tandem.v1 import router_pb2_grpc

log = logging.getLogger("services.router")


class Router:
    """The router's parts, wired; usable in-process by tests."""

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.watcher = WorkerWatcher(self.redis, settings.namespace, settings.discovery_interval_s)
        self.index = BlockIndex()
        self.ledger = InFlightLedger()
        self.clients = WorkerClients()
        self.routing = RouteChooser(self.watcher, self.index, self.ledger, settings.routing,
                                    settings.disaggregation_settings())
        self.index_feed = IndexFeed(self.redis, settings.namespace, self.index,
                                    grpc_dump_state(self._address_of),
                                    min_interval_s=settings.kv_feed_interval_ms / 1000)
        self.routing_watch = RoutingWatch(self.redis, settings.namespace, self.routing,
                                          settings.routing, settings.discovery_interval_s)
        self.watcher.listeners.append(lambda live: self.index_feed.set_workers(live))
        self.watcher.listeners.append(self._close_departed_channels)
        self.metrics = RouterMetrics()
        self.prompts = PromptBuilder(settings.model_dir or str(default_model_dir()),
                                     settings.max_model_len)
        self.generator = Generator(self.routing, self.clients, self.ledger, self.metrics,
                                   settings.retries, settings.request_timeout_s)
        model = settings.served_model_name
        self.app = OpenAIApp(model, settings.max_body_bytes, self.prompts, self.generator,
                             self.routing, self.metrics)
        self.http = HttpServer(self.app, settings.host, settings.http_port)
        self.grpc: GrpcServer | None = None
        if settings.grpc_port:
            servicer = RouterServicer(model, self.prompts, self.generator, self.routing)
            self.grpc = GrpcServer(
                f"{settings.host}:{settings.grpc_port}", [ROUTER_SERVICE],
                [lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s)],
                GrpcSettings(drain_grace_s=settings.drain_grace_s))
        self._ready_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    def _close_departed_channels(self, live: dict[str, WorkerInfo]) -> None:
        task = asyncio.create_task(self._close_channels_of_departed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_channels_of_departed(self) -> None:
        await self.clients.keep_only({w.address for w in self.watcher.workers.values()})

    def _address_of(self, worker_id: str) -> str | None:
        worker = self.watcher.workers.get(worker_id)
        return worker.address if worker else None

    async def start(self) -> None:
        await self.routing_watch.start()
        await self.index_feed.start()
        await self.watcher.start()
        await self.http.start()
        if self.grpc is not None:
            await self.grpc.start()
        self._ready_task = asyncio.create_task(self._become_ready())

    async def _become_ready(self) -> None:
        """gRPC health turns SERVING once a canary generation went through a worker."""
        while True:
            try:
                request = GenerationRequest(f"canary-{uuid.uuid4().hex[:8]}",
                                            self.settings.served_model_name, [1, 2, 3],
                                            Sampling(max_tokens=1, temperature=0.0))
                async for _ in self.generator.stream(request):
                    pass
                break
            except Exception as error:
                log.info("router not ready yet", extra={"reason": str(error)})
                await asyncio.sleep(max(self.settings.discovery_interval_s, 0.5))
        self.app.ready = True
        if self.grpc is not None:
            await self.grpc.set_serving(True)
        log.info("router serving", extra={"http_port": self.http.port})

    async def stop(self) -> None:
        if self._ready_task is not None:
            self._ready_task.cancel()
        if self.grpc is not None:
            await self.grpc.drain()
        await self.http.stop()
        await self.watcher.close()
        await self.routing_watch.close()
        await self.index_feed.close()
        await self.clients.close()
        await self.redis.aclose()


def supervise(settings: RouterSettings, argv: list[str]) -> None:
    """``--processes N``: N router processes on the same ports (see ``processes``)."""
    http = reserve_port(settings.host, settings.http_port)
    command = child_command(argv, http.getsockname()[1], settings.grpc_port)

    async def serve(stop: asyncio.Event) -> None:
        supervisor = Supervisor(settings.processes, command, settings.drain_grace_s)
        try:
            status = await supervisor.run(stop)
        finally:
            http.close()
        if status:
            raise SystemExit(status)

    run(serve)


def main(argv: list[str]) -> None:
    settings = load_settings(RouterSettings, "tandem_router", argv)
    setup_logging("router", settings.log_level)
    if settings.processes > 1:
        supervise(settings, argv)
        return
    setup_telemetry("tandem-router", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))

    async def serve(stop: asyncio.Event) -> None:
        router = Router(settings)
        await router.start()
        report_started()
        await stop.wait()
        await router.stop()

    run(serve)

