"""KV store against a real Redis, over real gRPC, as a real process: same-host and remote paths,
events, corruption detection, tier pressure with pinned blocks, concurrent writers and readers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import shutil
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from services.kvstore.launch import StoreProcess
from tandem.kvclient import KVClient, KVClientSettings
from tandem.redis_local import free_port
from tandem.v1 import common_pb2, kvstore_pb2

SIZE = 60_000
SLOT = 64 * 1024
CXL, NVME = common_pb2.STORAGE_TIER_CXL, common_pb2.STORAGE_TIER_NVME


def chain(tag: str, count: int) -> list[bytes]:
    out, parent = [], tag.encode()
    for _ in range(count):
        parent = hashlib.blake2b(parent, digest_size=16).digest()
        out.append(parent)
    return out


def payload(block_hash: bytes, size: int = SIZE) -> bytes:
    return hashlib.shake_128(block_hash).digest(size)


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def exists(path: str) -> bool:
    return os.path.exists(path)


class Store:
    def __init__(self, redis_url: str, *flags: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="tandem-kv-test-")
        self.arena = f"/dev/shm/tandem-kv-test-{os.getpid()}-{random.randrange(1 << 30)}.arena"
        self.namespace = f"t{random.randrange(1 << 30)}"
        self.metrics_port = free_port()
        self.proc = StoreProcess(redis_url, self.arena, os.path.join(self.dir, "nvme"),
                                 "--slot-bytes", str(SLOT), "--metrics-port",
                                 str(self.metrics_port), *flags, namespace=self.namespace)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(v) for v in re.findall(rf"^{name}\S*\s+([0-9.e+]+)$", text, re.M))

    def cleanup(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if os.path.exists(self.arena):
            os.unlink(self.arena)

    @classmethod
    def running(cls, redis_url: str, cxl_slots: int) -> Iterator[Store]:
        """A started store with ``cxl_slots`` arena slots and room for 64 blocks on disk,
        cleaned up afterwards (the body of a module fixture)."""
        store = cls(redis_url, "--cxl-capacity-bytes", str(cxl_slots * SLOT),
                    "--nvme-capacity-bytes", str(64 * SIZE))
        store.proc.start()
        try:
            yield store
        finally:
            store.cleanup()


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[Store]:
    yield from Store.running(redis_url, cxl_slots=24)


@pytest.fixture
async def clients(store: Store) -> AsyncIterator[tuple[KVClient, KVClient]]:
    local = KVClient(store.proc.address, KVClientSettings(same_host=True))
    remote = KVClient(store.proc.address, KVClientSettings(same_host=False, chunk_bytes=16384))
    await local.connect()
    await remote.connect()
    try:
        yield local, remote
    finally:
        await local.close()
        await remote.close()


async def test_put_get_lookup_both_paths(store: Store, clients: tuple[KVClient, KVClient],
                                         redis_url: str) -> None:
    local, remote = clients
    assert local.same_host and not remote.same_host
    hashes = chain("roundtrip", 6)
    data = [payload(x) for x in hashes]
    assert (await local.put(hashes[:3], data[:3])).stored == 3
    result = await remote.put(hashes, data)  # first three already there
    assert (result.stored, result.already_present, result.failed) == (3, 3, [])
    assert await local.lookup(hashes + chain("absent", 2)) == (6, [CXL] * 6)
    for client in (local, remote):
        got = await client.get(hashes + chain("absent", 1))
        assert [bytes(b) for b in got] == data
    assert await remote.get(chain("absent", 2)) == []
    nvme = chain("nvme-put", 2)
    assert (await local.put(nvme, [payload(x) for x in nvme], tier=NVME)).stored == 2
    assert await remote.lookup(nvme) == (2, [NVME, NVME])
    assert [bytes(b) for b in await remote.get(nvme)] == [payload(x) for x in nvme]
    remote_nvme = chain("remote-nvme-put", 3)
    result = await remote.put(remote_nvme, [payload(x) for x in remote_nvme], tier=NVME)
    assert (result.stored, result.failed) == (3, [])
    assert [bytes(b) for b in await local.get(remote_nvme)] == [payload(x) for x in remote_nvme]
    # Lookup answers from the store's index; every put wrote its records through to Redis
    # before replying, and left no reservation behind
    events = aioredis.from_url(redis_url)
    prefix = f"{store.namespace}:kvstore:kvstore"
    records: Any = await events.hmget(f"{prefix}:blocks", [*hashes, *nvme, *remote_nvme])
    assert all(record is not None for record in records)
    assert await events.hlen(f"{prefix}:writing") == 0
    # KV events in the agreed format
    entries: Any = await events.xrange(f"{store.namespace}:kv-events:store:cxl")
    stored = [f for _, f in entries if f[b"type"] == b"stored"]
    seqs = [int(f[b"seq"]) for _, f in entries]
    assert seqs == list(range(1, len(seqs) + 1))
    joined = b"".join(f[b"hashes"] for f in stored)
    assert all(x in joined for x in hashes)
    assert any(f[b"hashes"] == b"".join(hashes[:3]) and f[b"parent"] == b"" for f in stored)
    assert all(f[b"tier"] == b"cxl" for f in stored)
    await events.aclose()


async def test_bad_requests_are_invalid_argument_and_the_store_survives(
        clients: tuple[KVClient, KVClient]) -> None:
    local, _ = clients
    bad = [
        local.stub.Lookup(kvstore_pb2.LookupRequest(block_hashes=[b"short"])),
        local.stub.Reserve(kvstore_pb2.ReserveRequest(block_hashes=[b"x" * 16], block_bytes=0)),
        local.stub.Reserve(kvstore_pb2.ReserveRequest(block_hashes=[b"x" * 16],
                                                      block_bytes=SLOT, tier=7)),  # type: ignore[arg-type]
        local.stub.Get(kvstore_pb2.GetRequest(block_hashes=[b"x" * 17])).read(),
    ]
    for call in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def chunks() -> AsyncIterator[kvstore_pb2.PutRequest]:
        yield kvstore_pb2.PutRequest(block_hash=b"y" * 16, block_bytes=10, data=b"123")
        yield kvstore_pb2.PutRequest(data=b"far too many bytes")

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await local.stub.Put(chunks())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await local.lookup([b"y" * 16]))[0] == 0  # nothing half-written became visible
    assert (await local.lookup(chain("roundtrip", 1)))[0] == 1


async def test_flipped_bytes_are_detected_never_returned(
        store: Store, clients: tuple[KVClient, KVClient]) -> None:
    local, remote = clients
    before = store.metric("tandem_kvstore_checksum_failures")
    arena_chain, file_chain = chain("flip-arena", 3), chain("flip-file", 2)
    await local.put(arena_chain, [payload(x) for x in arena_chain])
    await local.put(file_chain, [payload(x) for x in file_chain], tier=NVME)
    # flip one byte in the middle of block 1 in the arena (found through a same-host read)
    call = local.stub.Get(kvstore_pb2.GetRequest(block_hashes=arena_chain[1:2]))
    replies = [r async for r in call]
    await local.stub.Release(kvstore_pb2.ReleaseRequest(lease_id=replies[0].lease_id))
    offset = replies[0].location.offset + SIZE // 2
    flip_byte(store.arena, offset)
    got = await remote.get(arena_chain)  # the server verifies before streaming
    assert [bytes(b) for b in got] == [payload(arena_chain[0])]
    assert (await local.lookup(arena_chain))[0] == 1  # the corrupt block was dropped
    # flip a byte in a block file; the same-host reader detects it and the store drops it
    path = os.path.join(store.proc.nvme, "blocks", file_chain[1].hex() + ".blk")
    flip_byte(path, 1000)
    got = await local.get(file_chain)
    assert [bytes(b) for b in got] == [payload(file_chain[0])]
    await local.flush()
    assert (await local.lookup(file_chain))[0] == 1
    assert not exists(path)
    assert store.metric("tandem_kvstore_checksum_failures") >= before + 2
    # and the data can be written again (block 2 was intact and stayed)
    result = await local.put(arena_chain[1:], [payload(x) for x in arena_chain[1:]],
                             parent=arena_chain[0])
    assert (result.stored, result.already_present) == (1, 1)
    assert len(await remote.get(arena_chain)) == 3


async def test_many_writers_and_readers_see_a_miss_or_the_exact_bytes(
        store: Store, clients: tuple[KVClient, KVClient]) -> None:
    local, remote = clients  # remote: the data plane
    assert remote.data_plane_up
    over_grpc = KVClient(store.proc.address, KVClientSettings(same_host=False, force_grpc=True))
    await over_grpc.connect()
    common = chain("shared-prefix", 4)
    chains = [common + chain(f"tail-{i}", 4) for i in range(6)]
    reads = 0
    done = asyncio.Event()

    async def writer(i: int) -> None:
        client = (local, remote, over_grpc)[i % 3]
        for _ in range(2):
            for hashes in random.sample(chains, 3):
                await client.put(hashes, [payload(x) for x in hashes])

    async def reader(client: KVClient) -> None:
        nonlocal reads
        while not done.is_set():
            hashes = random.choice(chains)
            got = await client.get(hashes)
            for block_hash, block in zip(hashes, got, strict=False):
                assert bytes(block) == payload(block_hash)
            reads += 1
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader(c)) for c in (local, remote, remote, over_grpc)]
    await asyncio.gather(*[writer(i) for i in range(6)])
    done.set()
    await asyncio.gather(*readers)
    assert reads > 0
    for hashes in chains:
        for client in (remote, over_grpc):
            got = await client.get(hashes)
            assert [bytes(b) for b in got] == [payload(x) for x in hashes[:len(got)]]
    await over_grpc.close()


async def test_fill_past_capacity_never_loses_a_pinned_block(redis_url: str) -> None:
    s = Store(redis_url, "--cxl-capacity-bytes", str(8 * SLOT), "--nvme-capacity-bytes",
              str(12 * SIZE), "--high-watermark", "0.8", "--low-watermark", "0.5",
              "--promote-on-hit", "false")
    s.proc.start()
    try:
        async with KVClient(s.proc.address, KVClientSettings(same_host=True)) as local, \
                KVClient(s.proc.address, KVClientSettings(same_host=False)) as remote:
            pinned = chain("pinned", 3)
            await local.put(pinned, [payload(x) for x in pinned])
            call = local.stub.Get(kvstore_pb2.GetRequest(block_hashes=pinned, lease_ms=60_000))
            replies = [r async for r in call]
            locations = [r.location for r in replies]
            assert len(locations) == 3
            stop = asyncio.Event()
            bad: list[str] = []

            async def read_pinned() -> None:
                while not stop.is_set():
                    got = await remote.get(pinned)
                    if [bytes(b) for b in got] != [payload(x) for x in pinned]:
                        bad.append(f"read {len(got)} of 3 pinned blocks")
                    await asyncio.sleep(0.005)

            readers = [asyncio.create_task(read_pinned()) for _ in range(2)]
            total = stored = 0
            for i in range(12):  # 48 blocks into 8 slots + 12 files
                hashes = chain(f"fill-{i}", 4)
                result = await local.put(hashes, [payload(x) for x in hashes])
                total += 4
                stored += result.stored
            stop.set()
            await asyncio.gather(*readers)
            assert not bad, bad
            assert stored >= total // 2
            # the pinned blocks never moved and are intact
            for location in locations:
                view = local.arena_view
                assert view is not None
                data = bytes(view[location.offset:location.offset + location.size])
                assert data == payload(location.block_hash)
            assert await local.lookup(pinned) == (3, [CXL] * 3)
            await local.stub.Release(kvstore_pb2.ReleaseRequest(lease_id=replies[0].lease_id))
            assert s.metric("tandem_kvstore_evictions") > 0
            assert s.metric("tandem_kvstore_demotions") > 0
            events = aioredis.from_url(redis_url)
            moved: Any = await events.xrange(f"{s.namespace}:kv-events:store:cxl")
            assert any(f[b"type"] == b"moved" and f[b"tier"] == b"nvme" for _, f in moved)
            dropped: Any = await events.xrange(f"{s.namespace}:kv-events:store:nvme")
            assert any(f[b"type"] == b"removed" for _, f in dropped)
            await events.aclose()
            # no chain has a hole: each fill chain is a prefix (lookup == readable blocks)
            for i in range(12):
                hashes = chain(f"fill-{i}", 4)
                count, _ = await local.lookup(hashes)
                got = await local.get(hashes)
                assert len(got) == count
                assert [bytes(b) for b in got] == [payload(x) for x in hashes[:count]]
    finally:
        s.cleanup()
