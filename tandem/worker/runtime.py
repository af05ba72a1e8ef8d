"""A worker's lifecycle: gRPC up → KV events → engine start → canary → registration and
SERVING; on stop: deregistration → drain → engine shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import redis.asyncio as aioredis

from tandem.discovery import Registration, WorkerInfo
from tandem.engines.base import Engine
from tandem.grpc_server import GrpcServer, GrpcSettings
from tandem.worker.canary import canary
from tandem.worker.kv_events import WorkerKVEvents
from tandem.worker.metrics import unwatch_engine, watch_engine
from tandem.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


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
