"""Composition root of the KV store: the only place that wires its parts together.

Start: tiers, Redis metadata, the store (reconciled), the gRPC servicer, the data plane (after
the gRPC port is bound), the canary, then SERVING. Stop (SIGTERM): drain gRPC within
``--drain-grace-s``, stop the data plane and the store, close the tiers and Redis.
"""

from __future__ import annotations

import logging
import os
import socket

from services.kvstore.api.dataplane import DataPlaneServer
from services.kvstore.api.server import KVStoreServicer, generic_handler
from services.kvstore.canary import canary
from services.kvstore.core.validate import Checks
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore
from services.kvstore.tiers.registry import build_tiers
from tandem.kvclient.memtune import keep_freed_memory
from tandem.service.control_plane import control_plane_redis
from tandem.service.grpc import KVSTORE_SERVICE, GrpcServer
from tandem.service.lifecycle import service_main

log = logging.getLogger("services.kvstore")


class KVStoreService:
    """The KV store as a kit ``Service``."""

    name = "kvstore"

    def __init__(self, settings: KVStoreSettings) -> None:
        self.settings = settings
        self.host_id = settings.host_id or socket.gethostname()
        self.redis = control_plane_redis(settings.control)
        self.tiers = build_tiers(settings)
        meta = RedisMeta(self.redis, settings.control.namespace, settings.store_id,
                         settings.tiers)
        self.store = KVStore(meta, self.tiers, settings)
        checks = Checks({tier.name: tier.storage for tier in self.tiers}, settings)
        self.servicer = KVStoreServicer(self.store, settings, checks, self.host_id)
        self.server = GrpcServer(
            f"{settings.server.host}:{settings.port}", [KVSTORE_SERVICE],
            [lambda s: s.add_generic_rpc_handlers((generic_handler(self.servicer),))],
            settings.grpc, settings.server.drain_grace_s)
        # built after the gRPC port is bound: an ephemeral data port could otherwise take it
        self.data_plane = (DataPlaneServer(self.store, settings, checks)
                           if settings.data_plane else None)
        self._store_started = False

    async def start(self) -> None:
        await self.store.start()
        self._store_started = True
        if self.data_plane is not None:
            self.servicer.data_port = await self.data_plane.start()
        await self.server.start()

    async def canary(self) -> None:
        await canary(self.server.address, self.host_id, self.data_plane is not None,
                     self.settings.grpc.tls)

    async def serve(self) -> None:
        await self.server.set_serving(True)
        log.info("kvstore serving", extra={
            "address": self.server.address, "host_id": self.host_id,
            "data_port": self.servicer.data_port, "tiers": list(self.settings.tiers),
            "pid": os.getpid()})

    async def drain(self) -> None:
        await self.server.drain()

    async def close(self) -> None:
        await self.server.close()
        if self.data_plane is not None:
            await self.data_plane.stop()
        if self._store_started:
            await self.store.stop()
        for tier in self.tiers:
            tier.close()
        await self.redis.aclose()


def kvstore(settings: KVStoreSettings) -> KVStoreService:
    keep_freed_memory(settings.malloc_keep_bytes)
    return KVStoreService(settings)


def main(argv: list[str]) -> None:
    service_main("kvstore", KVStoreSettings, argv, kvstore)
