"""The KV store's data plane against a real store process: round trips of exact bytes, first
writer wins, corruption is a miss, fallback to gRPC, bad input from a peer, a put cut off mid
block, concurrent writers of one chain. (SIGKILL mid data-plane put: test_kvstore_faults.py.)"""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from tandem.kvclient import KVClient, KVClientSettings
from tandem.kvclient import dataplane_codec as codec
from tandem.kvclient.checksums import checksum
from tandem.kvclient.dataplane_codec import Op, Status
from tandem.redis_local import free_port
from tandem.v1 import kvstore_pb2
from tests.integration.test_kvstore_service import (
    CXL,
    NVME,
    SIZE,
    Store,
    chain,
    exists,
    flip_byte,
    payload,
)

REPLY_LIMITS = codec.Limits(4096, 1 << 30)


def metric(store: Store, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels``."""
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{store.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for match in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})?\s+(\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


class RawPeer:
    """A hand-driven data-plane connection (for what a well-behaved client never sends)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *parts: bytes) -> None:
        for part in parts:
            self.writer.write(part)
        await self.writer.drain()

    async def reply(self) -> tuple[codec.Frame, bytes]:
        raw = await asyncio.wait_for(self.reader.readexactly(codec.FRAME_BYTES), 10)
        frame = codec.decode_frame(raw, REPLY_LIMITS, codec.REPLY_RULES)
        return frame, await self.reader.readexactly(frame.length)

    async def closed_by_store(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1 << 20), 10) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def put_head(hashes: list[bytes], request_id: int = 1, tier: int = 0) -> bytes:
    return codec.encode_put(request_id, len(hashes), b"", tier)


def block(index: int, block_hash: bytes, data: bytes, request_id: int = 1) -> bytes:
    return (codec.encode_block(request_id, index, block_hash, 0, len(data)) + data
            + codec.encode_trailer(checksum(data)))


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[Store]:
    yield from Store.running(redis_url, cxl_slots=32)


@pytest.fixture
async def remote(store: Store) -> AsyncIterator[KVClient]:
    async with KVClient(store.proc.address, KVClientSettings(same_host=False)) as client:
        assert client.data_plane_up and client.info is not None and client.info.data_port
        yield client


async def test_put_get_lookup_round_trip_exact_bytes(store: Store, remote: KVClient) -> None:
    grpc_bytes = metric(store, "tandem_kvstore_transfer_bytes_total", path="grpc")
    bytes_in = metric(store, "tandem_kvstore_transfer_bytes_total", path="dataplane",
                      direction="in")
    puts = metric(store, "tandem_kvstore_put_duration_seconds_count", path="dataplane")
    hashes = chain("dp-roundtrip", 5)
    data = [payload(x, SIZE - 1000 * i) for i, x in enumerate(hashes)]  # sizes differ
    result = await remote.put(hashes, data)
    assert (result.stored, result.already_present, result.failed) == (5, 0, [])
    assert await remote.lookup(hashes + chain("dp-absent", 2)) == (5, [CXL] * 5)
    got = await remote.get(hashes + chain("dp-absent", 1))
    assert [bytes(b) for b in got] == data
    buffers = [bytearray(SIZE + 7) for _ in hashes]
    got = await remote.get(hashes, into=buffers)
    assert [bytes(b) for b in got] == data
    assert all(view.obj is buffer for view, buffer in zip(got, buffers, strict=True))
    assert await remote.get(chain("dp-absent", 2)) == []
    nvme = chain("dp-nvme", 3)
    result = await remote.put(nvme, [payload(x) for x in nvme], tier=NVME)
    assert (result.stored, result.failed) == (3, [])
    assert await remote.lookup(nvme) == (3, [NVME] * 3)
    assert [bytes(b) for b in await remote.get(nvme)] == [payload(x) for x in nvme]
    assert exists(os.path.join(store.proc.nvme, "blocks", nvme[0].hex() + ".blk"))
    # the data plane carried every byte, gRPC none
    assert metric(store, "tandem_kvstore_transfer_bytes_total", path="grpc") == grpc_bytes
    assert metric(store, "tandem_kvstore_transfer_bytes_total", path="dataplane",
                  direction="in") == bytes_in + sum(map(len, data)) + 3 * SIZE
    assert metric(store, "tandem_kvstore_put_duration_seconds_count",
                  path="dataplane") == puts + 2


async def test_a_get_pins_its_blocks_and_releases_them(store: Store, remote: KVClient,
                                                       redis_url: str) -> None:
    hashes = chain("dp-pins", 4)
    await remote.put(hashes, [payload(x) for x in hashes])
    redis = aioredis.from_url(redis_url)
    leases = f"{store.namespace}:kvstore:kvstore:lease:*"
    seen: set[bytes] = set()
    stop = asyncio.Event()

    async def watch() -> None:  # the pins exist in Redis while the answer streams
        while not stop.is_set():
            seen.update([k async for k in redis.scan_iter(match=leases)])
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    for _ in range(500):  # a pin lives one read (~1 ms): read until the scanner catches one
        assert len(await remote.get(hashes)) == 4
        if seen:
            break
    stop.set()
    await watcher
    assert seen  # a lease was recorded for the reads ...
    assert [k async for k in redis.scan_iter(match=leases)] == []  # ... and released after them
    assert store.metric("tandem_kvstore_pinned_blocks") == 0
    await redis.aclose()


async def test_a_second_put_of_the_same_hash_is_a_no_op(remote: KVClient) -> None:
    hashes = chain("dp-twice", 3)
    first = [payload(x) for x in hashes]
    assert (await remote.put(hashes, first)).stored == 3
    result = await remote.put(hashes, [bytes(reversed(p)) for p in first])
    assert (result.stored, result.already_present, result.failed) == (0, 3, [])
    assert [bytes(b) for b in await remote.get(hashes)] == first


async def test_concurrent_writers_of_one_chain_the_first_wins_whole(store: Store) -> None:
    hashes = chain("dp-race", 6)
    variants = [[payload(x + bytes([v])) for x in hashes] for v in range(4)]
    clients = [KVClient(store.proc.address, KVClientSettings(same_host=False))
               for _ in variants]
    for client in clients:
        await client.connect()
    try:
        results = await asyncio.gather(*[c.put(hashes, v)
                                         for c, v in zip(clients, variants, strict=True)])
        assert sum(r.stored for r in results) == 6
        assert all(r.stored + r.already_present == 6 and not r.failed for r in results)
        got = [bytes(b) for b in await clients[0].get(hashes)]
        assert len(got) == 6
        for index, data in enumerate(got):
            assert data in {variant[index] for variant in variants}
    finally:
        for client in clients:
            await client.close()


async def test_corrupted_payloads_are_misses_never_data(store: Store, remote: KVClient) -> None:
    before = store.metric("tandem_kvstore_checksum_failures")
    arena_chain, file_chain = chain("dp-flip-arena", 3), chain("dp-flip-file", 3)
    await remote.put(arena_chain, [payload(x) for x in arena_chain])
    await remote.put(file_chain, [payload(x) for x in file_chain], tier=NVME)
    async with KVClient(store.proc.address, KVClientSettings(same_host=True)) as local:
        call = local.stub.Get(kvstore_pb2.GetRequest(block_hashes=arena_chain[1:2]))
        replies = [r async for r in call]
        await local.stub.Release(kvstore_pb2.ReleaseRequest(lease_id=replies[0].lease_id))
    flip_byte(store.arena, replies[0].location.offset + SIZE // 3)
    flip_byte(os.path.join(store.proc.nvme, "blocks", file_chain[2].hex() + ".blk"), 5000)
    got = await remote.get(arena_chain)
    assert [bytes(b) for b in got] == [payload(arena_chain[0])]
    got = await remote.get(file_chain)
    assert [bytes(b) for b in got] == [payload(x) for x in file_chain[:2]]
    assert await remote.lookup(arena_chain) == (1, [CXL])
    assert (await remote.lookup(file_chain))[0] == 2
    assert store.metric("tandem_kvstore_checksum_failures") >= before + 2


async def test_the_client_falls_back_to_grpc(redis_url: str, store: Store) -> None:
    # a store without a data plane advertises none
    off = Store(redis_url, "--data-plane", "false")
    off.proc.start()
    try:
        canary = metric(off, "tandem_kvstore_transfer_bytes_total", path="grpc", direction="in")
        async with KVClient(off.proc.address, KVClientSettings(same_host=False)) as client:
            assert client.info is not None and client.info.data_port == 0
            assert not client.data_plane_up
            hashes = chain("dp-off", 3)
            assert (await client.put(hashes, [payload(x) for x in hashes])).stored == 3
            assert [bytes(b) for b in await client.get(hashes)] == [payload(x) for x in hashes]
            assert await client.lookup(hashes) == (3, [CXL] * 3)
        assert metric(off, "tandem_kvstore_transfer_bytes_total", path="grpc",
                      direction="in") == canary + 3 * SIZE
        assert metric(off, "tandem_kvstore_lookup_duration_seconds_count", path="dataplane") == 0
        assert metric(off, "tandem_kvstore_lookup_duration_seconds_count", path="grpc") >= 1
    finally:
        off.cleanup()
    # a store whose data plane cannot be reached: every call still succeeds, over gRPC
    grpc_in = metric(store, "tandem_kvstore_transfer_bytes_total", path="grpc", direction="in")
    async with KVClient(store.proc.address, KVClientSettings(same_host=False)) as client:
        assert client.data_plane is not None and client.data_plane_up
        await client.data_plane.close()  # drop the open connection ...
        client.data_plane.port = free_port()  # ... and the next one is refused
        hashes = chain("dp-unreachable", 2)
        assert (await client.put(hashes, [payload(x) for x in hashes])).stored == 2
        assert not client.data_plane_up  # it rests before the next try
        assert [bytes(b) for b in await client.get(hashes)] == [payload(x) for x in hashes]
        assert await client.lookup(hashes) == (2, [CXL] * 2)
    assert metric(store, "tandem_kvstore_transfer_bytes_total", path="grpc",
                  direction="in") == grpc_in + 2 * SIZE


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        line = next(x for x in handle if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


BAD_INPUT = [
    ("garbage", [os.urandom(64)], Status.PROTOCOL),
    ("version 9", [b"\x09" + codec.encode_hashes(Op.LOOKUP, 1, [b"x" * 16])[1:]],
     Status.PROTOCOL),
    ("a GET of 2^31 hashes", [codec.encode_frame(Op.GET, 1, 1 << 31, 16 << 31)],
     Status.PROTOCOL),
    ("a lookup over --max-chain-blocks", [codec.encode_frame(Op.LOOKUP, 1, 5000, 16 * 5000)],
     Status.PROTOCOL),
    ("a block outside a put", [codec.encode_frame(Op.BLOCK, 1, 0, 41)], Status.PROTOCOL),
    ("a block of 2^62 bytes", [put_head([b"h" * 16]),
                               codec.encode_frame(Op.BLOCK, 1, 0, 1 << 62)], Status.PROTOCOL),
    ("a block over --max-block-bytes", [
        put_head([b"h" * 16]), codec.encode_frame(Op.BLOCK, 1, 0, 40 + (64 << 20) + 1)],
     Status.PROTOCOL),
    ("a put of a tier the store lacks", [put_head([b"h" * 16], tier=9)], Status.BAD_REQUEST),
    ("a block of another request", [put_head([b"h" * 16]), block(0, b"h" * 16, b"x", 2)],
     Status.PROTOCOL),
]


@pytest.mark.parametrize(("parts", "status"), [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_closes_that_connection_not_the_store(
        store: Store, remote: KVClient, parts: list[bytes], status: Status) -> None:
    assert remote.info is not None and store.proc.process is not None
    errors = metric(store, "tandem_kvstore_dataplane_errors_total")
    rss = _rss_bytes(store.proc.process.pid)
    peer = await RawPeer.open(remote.info.data_port)
    await peer.send(*parts)
    frame, message = await peer.reply()
    assert (frame.op, frame.status) == (Op.ERROR, status)
    assert message
    assert await peer.closed_by_store()
    peer.close()
    assert _rss_bytes(store.proc.process.pid) < rss + (32 << 20)  # nothing of the peer's size
    assert metric(store, "tandem_kvstore_dataplane_errors_total") == errors + 1
    hashes = chain("dp-after-bad-input", 2)  # and the store serves on, over the data plane
    assert (await remote.put(hashes, [payload(x) for x in hashes])).failed == []
    assert await remote.lookup(hashes) == (2, [CXL] * 2)
    assert remote.data_plane_up


async def test_a_put_cut_off_mid_block_leaves_nothing_visible(remote: KVClient) -> None:
    assert remote.info is not None
    hashes = chain("dp-cut", 2)
    data = [payload(x) for x in hashes]
    peer = await RawPeer.open(remote.info.data_port)
    await peer.send(put_head(hashes), block(0, hashes[0], data[0]),
                    block(1, hashes[1], data[1])[:codec.FRAME_BYTES + 32 + SIZE // 2])
    for _ in range(100):  # block 0 arrived whole: it commits; block 1 never will
        if (await remote.lookup(hashes))[0] == 1:
            break
        await asyncio.sleep(0.05)
    peer.close()
    await asyncio.sleep(0.2)
    assert await remote.lookup(hashes) == (1, [CXL])
    assert [bytes(b) for b in await remote.get(hashes)] == data[:1]
    result = await remote.put(hashes, data)  # the half block's space was given back
    assert (result.stored, result.already_present) == (1, 1)
    assert [bytes(b) for b in await remote.get(hashes)] == data


async def test_a_wrong_checksum_fails_that_block_only(remote: KVClient) -> None:
    assert remote.info is not None
    hashes = chain("dp-bad-crc", 2)
    data = [payload(x) for x in hashes]
    bad = (codec.encode_block(1, 1, hashes[1], 0, SIZE) + data[1]
           + codec.encode_trailer(checksum(data[1]) ^ 1))
    peer = await RawPeer.open(remote.info.data_port)
    await peer.send(put_head(hashes), block(0, hashes[0], data[0]), bad)
    frame, body = await peer.reply()
    assert codec.parse_put_reply(frame, body) == (1, 0, [hashes[1]])
    peer.close()
    assert await remote.lookup(hashes) == (1, [CXL])

