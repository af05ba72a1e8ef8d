"""Composition root of the KV store: the only place that wires its parts together.

Start: tiers, Redis metadata, the store (reconciled), the gRPC servicer, the data plane (after
the gRPC port is bound), metrics, the canary, then SERVING. Stop (SIGTERM): drain gRPC within
``--drain-grace-s``, stop the data plane and the store, close the tiers and Redis.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket

import redis.asyncio as aioredis

from services.kvstore.api.dataplane import DataPlaneServer
from services.kvstore.api.server import SERVICE, KVStoreServicer, generic_handler
from services.kvstore.canary import canary
from services.kvstore.core.validate import Checks
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore
from services.kvstore.tiers.registry import build_tiers
from tandem.config import load_settings
from tandem.grpc_server import GrpcServer, GrpcSettings
from tandem.kvclient.memtune import keep_freed_memory
from tandem.logs import setup_logging
from tandem.metrics_http import serve_metrics
from tandem.runtime import run
from tandem.telemetry import TelemetrySettings, setup_telemetry

log = logging.getLogger("services.kvstore")


def main(argv: list[str]) -> None:
    settings = load_settings(KVStoreSettings, "tandem_kvstore", argv)
    setup_logging("kvstore", settings.log_level)
    setup_telemetry("tandem-kvstore", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))
    host_id = settings.host_id or socket.gethostname()
    keep_freed_memory(settings.malloc_keep_bytes)
    run(functools.partial(serve, settings, host_id))


async def serve(settings: KVStoreSettings, host_id: str, stop: asyncio.Event) -> None:
    """Runs the store until ``stop`` is set, then drains."""
    redis = aioredis.from_url(settings.redis_url)
    tiers = build_tiers(settings)
    meta = RedisMeta(redis, settings.namespace, settings.store_id, settings.tiers)
    store = KVStore(meta, tiers, settings)
    await store.start()
    checks = Checks({tier.name: tier.storage for tier in tiers}, settings)
    servicer = KVStoreServicer(store, settings, checks, host_id)
    server = GrpcServer(
        f"{settings.host}:{settings.port}", [SERVICE],
        [lambda s: s.add_generic_rpc_handlers((generic_handler(servicer),))],
        GrpcSettings(drain_grace_s=settings.drain_grace_s))
    # after the gRPC port is bound: an ephemeral data port could otherwise take it
    data_plane = DataPlaneServer(store, settings, checks) if settings.data_plane else None
    data_port = servicer.data_port = await data_plane.start() if data_plane else 0
    if settings.metrics_port is not None:
        serve_metrics(settings.host, settings.metrics_port)
    await server.start()
    try:
        await canary(server.address, host_id, data_plane is not None)
        await server.set_serving(True)
        log.info("kvstore serving", extra={"address": server.address, "host_id": host_id,
                                           "data_port": data_port,
                                           "tiers": list(settings.tiers), "pid": os.getpid()})
        await stop.wait()
    finally:
        await server.drain()
        if data_plane is not None:
            await data_plane.stop()
        await store.stop()
        for tier in tiers:
            tier.close()
        await redis.aclose()
