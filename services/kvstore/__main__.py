"""Entry point of the KV store: ``python -m services.kvstore --help``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import sys

import redis.asyncio as aioredis

from services.kvstore.arena import Arena
from services.kvstore.dataplane import DataPlaneServer
from services.kvstore.nvme import BlockFiles
from services.kvstore.policy import TierSpec
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.server import SERVICE, KVStoreServicer, generic_handler
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore, StoreOptions
from services.kvstore.tiers import ArenaTier, FileTier, Tier
from tandem.config import load_settings
from tandem.grpc_server import GrpcServer
from tandem.kvclient import KVClient, KVClientSettings
from tandem.kvclient.memtune import keep_freed_memory
from tandem.logs import setup_logging
from tandem.metrics_http import serve_metrics
from tandem.runtime import run
from tandem.telemetry import TelemetrySettings, setup_telemetry

log = logging.getLogger("services.kvstore")


def build_tiers(settings: KVStoreSettings) -> list[Tier]:
    tiers: list[Tier] = []
    for name in settings.tiers:
        if name == "cxl":
            slots = settings.cxl_capacity_bytes // settings.slot_bytes
            spec = TierSpec(name, slots * settings.slot_bytes, settings.high_watermark,
                            settings.low_watermark)
            arena = Arena(settings.cxl_path, settings.slot_bytes, slots, settings.populate)
            tiers.append(ArenaTier(name, spec, arena))
        else:
            spec = TierSpec(name, settings.nvme_capacity_bytes, settings.high_watermark,
                            settings.low_watermark)
            tiers.append(FileTier(name, spec, BlockFiles(settings.nvme_path),
                                  settings.nvme_direct_io))
    return tiers


async def canary(address: str, host_id: str, data_plane: bool) -> None:
    """A real put and get of a small block through every path: remote over the data plane (when
    it runs) and over gRPC, and same-host."""
    block_hash = hashlib.blake2b(b"tandem-kvstore-canary", digest_size=16).digest()
    payload = hashlib.blake2b(b"canary-payload").digest() * 128
    paths = [(False, False)] if data_plane else []
    for same_host, force_grpc in [*paths, (False, True), (True, False)]:
        async with KVClient(address, KVClientSettings(
                same_host=same_host, host_id=host_id, streams=1, timeout_s=10,
                force_grpc=force_grpc)) as client:
            if not force_grpc and not same_host and not client.data_plane_up:
                raise RuntimeError("canary could not reach the data plane")
            result = await client.put([block_hash], [payload])
            if result.failed:
                raise RuntimeError("canary put failed")
            got = await client.get([block_hash])
            if len(got) != 1 or bytes(got[0]) != payload:
                raise RuntimeError("canary get did not return the bytes put")
            present, _ = await client.lookup([block_hash])
            if present != 1:
                raise RuntimeError("canary lookup did not find the block put")


def main(argv: list[str]) -> None:
    settings = load_settings(KVStoreSettings, "tandem_kvstore", argv)
    setup_logging("kvstore", settings.log_level)
    setup_telemetry("tandem-kvstore", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))
    host_id = settings.host_id or socket.gethostname()
    keep_freed_memory(settings.malloc_keep_bytes)

    async def serve(stop: asyncio.Event) -> None:
        redis = aioredis.from_url(settings.redis_url)
        tiers = build_tiers(settings)
        meta = RedisMeta(redis, settings.namespace, settings.store_id, settings.tiers)
        store = KVStore(meta, tiers, StoreOptions(
            reserve_timeout_s=settings.reserve_timeout_s, lease_ms=settings.lease_ms,
            promote_on_hit=settings.promote_on_hit, verify_on_commit=settings.verify_on_commit,
            verify_on_start=settings.verify_on_start))
        await store.start()
        servicer = KVStoreServicer(store, settings, host_id)
        server = GrpcServer(
            f"{settings.host}:{settings.port}", [SERVICE],
            [lambda s: s.add_generic_rpc_handlers((generic_handler(servicer),))])
        # after the gRPC port is bound: an ephemeral data port could otherwise take it
        data_plane = (DataPlaneServer(store, settings, servicer.checks) if settings.data_plane
                      else None)
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
                if isinstance(tier, ArenaTier):
                    tier.arena.close()
            await redis.aclose()

    run(serve)


if __name__ == "__main__":
    main(sys.argv[1:])
