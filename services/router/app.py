"""The router's composition root: its parts, wired (``Router``), and ``main`` (``python -m
services.router --help``)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from services.router.access import Access
from services.router.api.grpc_api import RouterServicer, add_router_service
from services.router.api.http_api import OpenAIApp
from services.router.api.http_keys import ApiKeyMiddleware
from services.router.api.openai_auto_tools import AutoToolConfig, AutoTools
from services.router.api.server import HttpServer
from services.router.core.in_flight import InFlightLedger
from services.router.core.index import BlockIndex
from services.router.core.request import GenerationRequest
from services.router.generation import Generator
from services.router.guard import FleetGuard
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
from tandem.model import is_prepared
from tandem.service.control_plane import control_plane_redis
from tandem.service.grpc import ROUTER_SERVICE, GrpcServer
from tandem.service.lifecycle import run, serve_process
from tandem.service.settings import load_settings

log = logging.getLogger("services.router")


class Router:
    """The router's parts, wired, as a kit ``Service``; usable in-process by tests."""

    name = "router"

    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        control, model = settings.control, settings.model
        self.redis = control_plane_redis(control)
        self.watcher = WorkerWatcher(self.redis, control.namespace, settings.discovery_interval_s)
        self.index = BlockIndex()
        self.ledger = InFlightLedger()
        self.clients = WorkerClients(settings.grpc, settings.token_stream,
                                     settings.token_stream_idle_connections)
        self.routing = RouteChooser(self.watcher, self.index, self.ledger, settings.routing,
                                    settings.disaggregation_settings())
        self.index_feed = IndexFeed(self.redis, control.namespace, self.index,
                                    grpc_dump_state(self._address_of, grpc_settings=settings.grpc),
                                    min_interval_s=settings.kv_feed_interval_ms / 1000,
                                    wanted=lambda: self.routing.policy.reads_index)
        self.routing_watch = RoutingWatch(self.redis, control.namespace, self.routing,
                                          settings.routing, settings.discovery_interval_s)
        self.watcher.listeners.append(lambda live: self.index_feed.set_workers(live))
        self.watcher.listeners.append(self._close_departed_channels)
        self.metrics = RouterMetrics()
        self.guard = FleetGuard(settings.admission, settings.breaker, self.watcher,
                                self.ledger, self.metrics, model.served_model_name,
                                self.clients)
        self.routing.guard = self.guard  # breakers and slots filter the candidates
        self.prompts = PromptBuilder(model.resolved_dir(), model.max_model_len)
        self.generator = Generator(self.routing, self.clients, self.ledger, self.metrics,
                                   settings.retries, settings.request_timeout_s,
                                   settings.max_migrations, self.guard)
        self.auto_tools = AutoTools(AutoToolConfig.resolve(
            settings.tool_call_parser, settings.tool_chat_template,
            self.prompts.template_source, is_prepared(Path(model.resolved_dir()))),
            self.prompts.tokenizer)
        self.app = OpenAIApp(model.served_model_name, settings.max_body_bytes, self.prompts,
                             self.generator, self.routing, self.metrics, self.auto_tools)
        self.access = (Access(settings.api_keys, self.redis, control.namespace,
                              model.max_model_len) if settings.api_keys.enabled else None)
        self.http = HttpServer(ApiKeyMiddleware(self.app, self.access) if self.access
                               else self.app, settings.server.host, settings.http_port,
                               settings.grpc.tls)
        self.grpc: GrpcServer | None = None
        if settings.grpc_port:
            servicer = RouterServicer(model.served_model_name, self.prompts, self.generator,
                                      self.routing, self.auto_tools)
            self.grpc = GrpcServer(
                f"{settings.server.host}:{settings.grpc_port}", [ROUTER_SERVICE],
                [lambda s: add_router_service(servicer, s, self.access)],
                settings.grpc, settings.server.drain_grace_s)
        self.started = asyncio.Event()
        """Set once both servers listen (the canary may still be waiting for a worker)."""
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
        if self.access is not None:
            self.access.limiter.start()
        await self.routing_watch.start()
        await self.index_feed.start()
        await self.watcher.start()
        await self.http.start()
        if self.grpc is not None:
            await self.grpc.start()
        if self.settings.tool_parser_preload and self.auto_tools.config.refusal is None:
            await asyncio.to_thread(self.auto_tools.load)
        report_started()
        self.started.set()

    async def canary(self) -> None:
        """One generation through a worker: raises until a decode worker serves. With
        ``--admission-no-worker-wait-s`` (scale-to-zero) a fleet without any decode worker is a
        normal state: the router serves at once (requests wait for the first worker), and the
        canary sends nothing (it would wait too, and count as demand)."""
        model = self.settings.model.served_model_name
        if self.settings.admission.no_worker_wait_s and not self.routing.decode_workers(model):
            log.info("no decode worker yet: requests will wait for one",
                     extra={"no_worker_wait_s": self.settings.admission.no_worker_wait_s})
            return
        request = GenerationRequest(f"canary-{uuid.uuid4().hex[:8]}",
                                    self.settings.model.served_model_name, [1, 2, 3],
                                    Sampling(max_tokens=1, temperature=0.0))
        async for _ in self.generator.stream(request):
            pass

    async def serve(self) -> None:
        self.app.ready = True
        if self.grpc is not None:
            await self.grpc.set_serving(True)
        log.info("router serving", extra={"http_port": self.http.port})

    async def drain(self) -> None:
        if self.grpc is not None:
            await self.grpc.drain()
        await self.http.stop()

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        await self.http.stop()
        await self.guard.close()
        if self.access is not None:
            await self.access.limiter.close()
        await self.watcher.close()
        await self.routing_watch.close()
        await self.index_feed.close()
        await self.clients.close()
        await self.redis.aclose()


def supervise(settings: RouterSettings, argv: list[str]) -> None:
    """``--processes N``: N router processes on the same ports (see ``processes``)."""
    http = reserve_port(settings.server.host, settings.http_port)
    command = child_command(argv, http.getsockname()[1], settings.grpc_port)

    async def serve(stop: asyncio.Event) -> None:
        supervisor = Supervisor(settings.processes, command, settings.server.drain_grace_s)
        try:
            status = await supervisor.run(stop)
        finally:
            http.close()
        if status:
            raise SystemExit(status)

    run(serve)


def main(argv: list[str]) -> None:
    settings = load_settings(RouterSettings, "tandem_router", argv)
    if settings.processes > 1:
        setup_logging("router", settings.telemetry.log_level)
        supervise(settings, argv)
        return
    serve_process("router", settings, Router,
                  canary_retry_s=max(settings.discovery_interval_s, 0.5))
