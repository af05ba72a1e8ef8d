"""Fault tests: SIGKILL a real ``python -m services.kvstore`` in the middle of puts and gets (over
gRPC, the same-host path and the data plane), restart it, and show that committed blocks survive
and nothing partial or corrupt is ever returned; lose the Redis metadata and corrupt the arena
while the store is down."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from tandem.kvclient import KVClient, KVClientSettings
from tandem.kvclient import dataplane_codec as codec
from tandem.kvclient.checksums import checksum
from tandem.v1 import common_pb2, kvstore_pb2, kvstore_pb2_grpc
from tests.integration.test_kvstore_dataplane import RawPeer, block, put_head
from tests.integration.test_kvstore_service import SIZE, SLOT, Store, chain, flip_byte, payload

CXL, NVME = common_pb2.STORAGE_TIER_CXL, common_pb2.STORAGE_TIER_NVME


def write_at(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


async def read_all(address: str, hashes: list[bytes]) -> list[list[bytes]]:
    """Reads through both paths; every answer must be a prefix of exact payloads."""
    out = []
    for same_host in (True, False):
        async with KVClient(address, KVClientSettings(same_host=same_host)) as client:
            got = [bytes(b) for b in await client.get(hashes)]
            assert got == [payload(x) for x in hashes[:len(got)]]
            out.append(got)
    return out


async def test_sigkill_mid_put_and_get_then_restart(redis_url: str) -> None:
    s = Store(redis_url, "--cxl-capacity-bytes", str(32 * SLOT), "--reserve-timeout-s", "2")
    s.proc.start()
    try:
        committed, durable = chain("survivor", 6), chain("durable", 3)
        async with KVClient(s.proc.address, KVClientSettings(same_host=True)) as client:
            assert (await client.put(committed, [payload(x) for x in committed])).stored == 6
            assert (await client.put(durable, [payload(x) for x in durable],
                                     tier=NVME)).stored == 3

        # a same-host writer reserves two blocks, writes one and a half, then the store dies
        torn = chain("torn-local", 2)
        channel = grpc.aio.insecure_channel(s.proc.address)
        stub = kvstore_pb2_grpc.KVStoreServiceStub(channel)
        reserved = await stub.Reserve(kvstore_pb2.ReserveRequest(block_hashes=torn,
                                                                 block_bytes=SIZE))
        locations = [r.location for r in reserved.reservations]
        assert all(r.status == kvstore_pb2.RESERVE_STATUS_RESERVED
                   for r in reserved.reservations)
        write_at(s.arena, locations[0].offset, payload(torn[0]))
        write_at(s.arena, locations[1].offset, payload(torn[1])[:SIZE // 2])

        # a remote writer is in the middle of a block's chunks
        partial = chain("torn-remote", 1)[0]
        sent = asyncio.Event()

        async def slow_chunks() -> AsyncIterator[kvstore_pb2.PutRequest]:
            data = payload(partial)
            yield kvstore_pb2.PutRequest(block_hash=partial, block_bytes=SIZE,
                                         checksum=checksum(data), data=data[:1000])
            sent.set()
            await asyncio.sleep(30)
            yield kvstore_pb2.PutRequest(data=data[1000:])

        put_call = stub.Put(slow_chunks())
        # and readers keep reading through both paths while the store dies
        stop = asyncio.Event()
        outcomes: list[str] = []

        async def reader(same_host: bool) -> None:
            async with KVClient(s.proc.address, KVClientSettings(
                    same_host=same_host, timeout_s=2)) as client:
                while not stop.is_set():
                    try:
                        got = [bytes(b) for b in await client.get(committed)]
                    except grpc.aio.AioRpcError:
                        outcomes.append("error")
                        await asyncio.sleep(0.01)
                        continue
                    assert got == [payload(x) for x in committed[:len(got)]]
                    outcomes.append(f"read {len(got)}")

        readers = [asyncio.create_task(reader(same)) for same in (True, False)]
        await sent.wait()
        await asyncio.sleep(0.3)
        s.proc.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await put_call
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*readers)
        assert "read 6" in outcomes and "error" in outcomes
        await channel.close()

        s.proc.start()
        assert await read_all(s.proc.address, committed) == [[payload(x) for x in committed]] * 2
        assert await read_all(s.proc.address, durable) == [[payload(x) for x in durable]] * 2
        async with KVClient(s.proc.address, KVClientSettings(same_host=True)) as client:
            assert (await client.lookup(durable))[0] == 3  # (promoted to cxl by the reads)
            for hashes in (torn, [partial]):
                assert await client.lookup(hashes) == (0, [])
                assert await client.get(hashes) == []
            late = await client.stub.Commit(kvstore_pb2.CommitRequest(blocks=[
                kvstore_pb2.CommittedBlock(block_hash=torn[0], generation=locations[0].generation,
                                           checksum=checksum(payload(torn[0])))]))
            assert late.committed == 0 and list(late.rejected_hashes) == [torn[0]]
            # the torn blocks can be written for real now
            assert (await client.put(torn, [payload(x) for x in torn])).stored == 2
        assert await read_all(s.proc.address, torn) == [[payload(x) for x in torn]] * 2

        # the store dies again; Redis loses its metadata; a byte rots in the arena
        async with KVClient(s.proc.address, KVClientSettings(same_host=True)) as client:
            call = client.stub.Get(kvstore_pb2.GetRequest(block_hashes=committed[4:5]))
            rotten = [r async for r in call].pop()
            await client.stub.Release(kvstore_pb2.ReleaseRequest(lease_id=rotten.lease_id))
        s.proc.kill()
        redis = aioredis.from_url(redis_url)
        keys = [k async for k in redis.scan_iter(match=f"{s.namespace}:kvstore:*")]
        assert keys
        await redis.delete(*keys)
        flip_byte(s.arena, rotten.location.offset + 7)
        s.proc.start()
        async with KVClient(s.proc.address, KVClientSettings(same_host=False)) as client:
            assert (await client.lookup(committed))[0] == 4  # rebuilt from the tiers, rot dropped
            assert (await client.lookup(durable))[0] == 3  # (promoted to cxl by the reads)
            assert await client.lookup(torn) == (2, [CXL] * 2)
        assert await read_all(s.proc.address, committed) == \
            [[payload(x) for x in committed[:4]]] * 2
        assert await redis.hlen(f"{s.namespace}:kvstore:kvstore:writing") == 0
        await redis.aclose()
    finally:
        s.cleanup()


@pytest.mark.parametrize("tier", [CXL, NVME], ids=["cxl", "nvme"])
async def test_sigkill_mid_data_plane_put_leaves_nothing_partial(redis_url: str,
                                                                 tier: int) -> None:
    s = Store(redis_url, "--cxl-capacity-bytes", str(32 * SLOT), "--reserve-timeout-s", "2")
    s.proc.start()
    try:
        hashes = chain(f"dp-killed-{tier}", 3)
        data = [payload(x) for x in hashes]
        async with KVClient(s.proc.address, KVClientSettings(same_host=False)) as client:
            assert client.info is not None and client.data_plane_up
            # two whole blocks and half of the third, then the store dies
            peer = await RawPeer.open(client.info.data_port)
            await peer.send(put_head(hashes, tier=tier), block(0, hashes[0], data[0]),
                            block(1, hashes[1], data[1]),
                            block(2, hashes[2], data[2])[:codec.FRAME_BYTES + 32 + SIZE // 2])
            for _ in range(100):
                if (await client.lookup(hashes))[0] == 2:
                    break
                await asyncio.sleep(0.05)
            assert (await client.lookup(hashes))[0] == 2
        s.proc.kill()
        assert await peer.closed_by_store()
        peer.close()
        s.proc.start()
        for force_grpc in (False, True):
            async with KVClient(s.proc.address, KVClientSettings(
                    same_host=False, force_grpc=force_grpc)) as client:
                assert (await client.lookup(hashes))[0] == 2  # (nvme: promoted by the reads)
                assert [bytes(b) for b in await client.get(hashes)] == data[:2]
                assert await client.lookup(hashes[2:]) == (0, [])
        assert await read_all(s.proc.address, hashes) == [data[:2]] * 2
        async with KVClient(s.proc.address, KVClientSettings(same_host=False)) as client:
            result = await client.put(hashes, data, tier=tier)  # the torn block can be written
            assert (result.stored, result.already_present) == (1, 2)
            assert [bytes(b) for b in await client.get(hashes)] == data
        if tier == NVME:
            assert os.listdir(os.path.join(s.proc.nvme, "tmp")) == []
    finally:
        s.cleanup()
