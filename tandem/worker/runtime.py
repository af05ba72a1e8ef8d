"""A worker's life on the kit's lifecycle: gRPC up → KV events → engine start (``start``) →
one real generation (``canary``) → registration and SERVING (``serve``); on SIGTERM:
deregistration → drain (``drain``) → engine shutdown (``close``)."""

from __future__ import annotations

import logging
import os
import socket

import redis.asyncio as aioredis

from tandem.discovery import Registration, WorkerInfo
from tandem.engines.base import Engine
from tandem.service.grpc import GrpcServer
from tandem.worker.canary import canary
from tandem.worker.kv_events import WorkerKVEvents
from tandem.worker.metrics import unwatch_engine, watch_engine
from tandem.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class WorkerRuntime:
    """One engine worker as a kit ``Service`` (``tandem.service.lifecycle.run_service``)."""

    def __init__(self, role: str, settings: WorkerSettings, engine: Engine,
                 server: GrpcServer, kv_events: WorkerKVEvents | None = None) -> None:
        self.role = role
        self.kv_events = kv_events or WorkerKVEvents(engine)
        self.settings = settings
        self.engine = engine
        self.server = server
        self.worker_id = settings.resolved_worker_id(role)
        self.name = self.worker_id
        self.redis = aioredis.Redis.from_url(settings.control.redis_url)
        self.registration: Registration | None = None

    async def start(self) -> None:
        await self.server.start()
        log.info("starting engine", extra={"engine": self.settings.engine, "pid": os.getpid()})
        await self.kv_events.start(self.redis, self.settings.control.namespace, self.worker_id)
        await self.engine.start()

    async def canary(self) -> None:
        await canary(self.engine)

    async def serve(self) -> None:
        settings = self.settings
        info = WorkerInfo(
            worker_id=self.worker_id,
            role=self.role,
            address=f"{settings.advertise_host or settings.server.host}:{self.server.port}",
            model=settings.model.served_model_name,
            engine=self.engine.fingerprint,
            max_model_len=self.engine.max_model_len,
            block_size=self.engine.block_size,
            host=socket.gethostname(),
        )
        self.registration = Registration(
            self.redis, info, settings.control.namespace, settings.lease_ttl_s)
        await self.registration.open()
        watch_engine(self.worker_id, self.role, self.engine.load)
        await self.server.set_serving(True)
        log.info("worker serving", extra={"worker_id": self.worker_id, "address": info.address})

    async def drain(self) -> None:
        log.info("draining", extra={"worker_id": self.worker_id})
        await self._deregister()
        await self.server.drain()

    async def close(self) -> None:
        await self._deregister()
        await self.server.close()
        await self.engine.shutdown()
        await self.kv_events.close()
        await self.redis.aclose()

    async def _deregister(self) -> None:
        if self.registration is not None:
            registration, self.registration = self.registration, None
            await registration.close()
            unwatch_engine(self.worker_id)
