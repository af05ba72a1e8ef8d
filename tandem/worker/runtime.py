"""A worker's life on the kit's lifecycle: gRPC up → "starting" in discovery → KV events →
engine start (``start``) → one real generation (``canary``) → "serving" in discovery and
SERVING (``serve``); on SIGTERM (or
WorkerService.Drain, which raises the same SIGTERM): "draining" in discovery at once (routers
send it nothing new, and keep the channels of its running streams) → for ``drain_notice_s`` it
still serves the calls of routers that have not refreshed yet → the gRPC server refuses
new calls and lets running ones finish within the drain grace; the calls still open when it
ends are closed UNAVAILABLE, and the router migrates each to another worker from the tokens
already sent (a hand-over: nothing is lost) → deregistration (``drain``) → engine shutdown
(``close``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable

from tandem.discovery import Registration, WorkerInfo, WorkerState
from tandem.engines.base import Engine
from tandem.service.control_plane import control_plane_redis
from tandem.service.grpc import GrpcServer
from tandem.service.lifecycle import Server
from tandem.tokenstream.server import TokenStreamServer
from tandem.worker.canary import canary
from tandem.worker.kv_events import WorkerKVEvents
from tandem.worker.metrics import unwatch_engine, watch_engine
from tandem.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


def _sigterm_self() -> None:
    signal.raise_signal(signal.SIGTERM)


class DrainSwitch:
    """A drain asked for over gRPC (WorkerService.Drain): ``request`` sets off the drain once,
    by ``stop`` (default: SIGTERM to this process, so it is the very drain SIGTERM runs; an
    in-process worker passes its stop event's ``set``)."""

    def __init__(self, stop: Callable[[], None] = _sigterm_self) -> None:
        self.stop = stop
        self.requested = False
        """Whether a drain was asked for (over gRPC or by the runtime's own drain)."""

    def request(self) -> bool:
        """Sets off the drain; returns whether it was set off already."""
        already, self.requested = self.requested, True
        if not already:
            log.info("drain requested")
            self.stop()
        return already


class WorkerRuntime:
    """One engine worker as a kit ``Service`` (``tandem.service.lifecycle.run_service``)."""

    def __init__(self, role: str, settings: WorkerSettings, engine: Engine,
                 server: GrpcServer, kv_events: WorkerKVEvents | None = None,
                 drain_switch: DrainSwitch | None = None,
                 stream: TokenStreamServer | None = None) -> None:
        self.drain_switch = drain_switch or DrainSwitch()
        self.stream = stream
        """The token stream beside gRPC (decode workers), with the gRPC server's lifecycle."""
        self.servers: list[Server] = [server, *([stream] if stream is not None else [])]
        self.role = role
        self.kv_events = kv_events or WorkerKVEvents(engine)
        self.settings = settings
        self.engine = engine
        self.server = server
        self.worker_id = settings.resolved_worker_id(role)
        self.name = self.worker_id
        self.redis = control_plane_redis(settings.control)
        self.registration: Registration | None = None

    async def start(self) -> None:
        for listening in self.servers:
            await listening.start()
        await self._announce_starting()
        log.info("starting engine", extra={"engine": self.settings.engine, "pid": os.getpid()})
        await self.kv_events.start(self.redis, self.settings.control.namespace, self.worker_id)
        await self.engine.start()

    async def canary(self) -> None:
        await canary(self.engine)

    async def serve(self) -> None:
        info = self._info("serving")
        if self.registration is None:  # Redis was away at start
            self.registration = Registration(self.redis, info, self.settings.control.namespace,
                                             self.settings.lease_ttl_s)
            await self.registration.open()
        else:  # the engine's block size is known now (vLLM's is chosen at start)
            await self.registration.update(info)
        watch_engine(self.worker_id, self.role, self.engine.load)
        await self.server.set_serving(True)
        log.info("worker serving", extra={"worker_id": self.worker_id, "address": info.address})

    def _info(self, state: WorkerState) -> WorkerInfo:
        settings = self.settings
        return WorkerInfo(
            worker_id=self.worker_id,
            role=self.role,
            address=f"{settings.advertise_host or settings.server.host}:{self.server.port}",
            model=settings.model.served_model_name,
            engine=self.engine.fingerprint,
            max_model_len=self.engine.max_model_len,
            block_size=self.engine.block_size,
            host=socket.gethostname(),
            state=state,
            max_num_seqs=self.engine.max_num_seqs,
            # known once the engine started (vLLM sizes its cache at start)
            kv_blocks=self.engine.load().total_blocks if state != "starting" else 0,
            stream_port=self.stream.port if self.stream is not None else 0,
        )

    async def _announce_starting(self) -> None:
        """"starting" in discovery while the engine loads and the canary runs (a planner
        counts the capacity on its way; routers send it nothing), bounded by the lease TTL:
        a Redis that is away delays the announcement to ``serve``, not the start."""
        registration = Registration(self.redis, self._info("starting"),
                                    self.settings.control.namespace, self.settings.lease_ttl_s)
        try:
            async with asyncio.timeout(self.settings.lease_ttl_s):
                await registration.open()
        except Exception:
            await registration.close()
            log.warning("could not announce starting", exc_info=True)
            return
        self.registration = registration

    async def drain(self) -> None:
        log.info("draining", extra={"worker_id": self.worker_id,
                                    "running": self.engine.load().running})
        self.drain_switch.requested = True  # a Drain call from now on changes nothing
        await self._announce_draining()
        await asyncio.sleep(self.settings.drain_notice_s)  # routers see "draining" first
        await asyncio.gather(*(listening.drain() for listening in self.servers))
        await self._deregister()
        log.info("drained", extra={"worker_id": self.worker_id})

    async def _announce_draining(self) -> None:
        """"draining" in discovery, so routers stop sending new requests but keep the
        channels of the running ones; bounded by the lease TTL (Redis may be away: the drain
        goes on, and the lease lapses or the deregistration removes the worker)."""
        if self.registration is None:
            return
        try:
            async with asyncio.timeout(self.settings.lease_ttl_s):
                await self.registration.set_state("draining")
        except Exception:
            log.warning("could not announce draining", exc_info=True)

    async def close(self) -> None:
        await self._deregister()
        for listening in self.servers:
            await listening.close()
        await self.engine.shutdown()
        await self.kv_events.close()
        await self.redis.aclose()

    async def _deregister(self) -> None:
        if self.registration is not None:
            registration, self.registration = self.registration, None
            await registration.close()
            unwatch_engine(self.worker_id)
