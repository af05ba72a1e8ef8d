"""The store's canary: a real put and get of a small block through every path, before the
store reports SERVING."""

from __future__ import annotations

import hashlib

from tandem.kvclient import KVClient, KVClientSettings
from tandem.service.tls import TlsSettings


async def canary(address: str, host_id: str, data_plane: bool,
                 tls: TlsSettings | None = None) -> None:
    """A real put and get of a small block through every path: remote over the data plane (when
    it runs) and over gRPC, and same-host."""
    block_hash = hashlib.blake2b(b"tandem-kvstore-canary", digest_size=16).digest()
    payload = hashlib.blake2b(b"canary-payload").digest() * 128
    paths = [(False, False)] if data_plane else []
    for same_host, force_grpc in [*paths, (False, True), (True, False)]:
        async with KVClient(address, KVClientSettings(
                same_host=same_host, host_id=host_id, streams=1, timeout_s=10,
                force_grpc=force_grpc, tls=tls or TlsSettings())) as client:
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
