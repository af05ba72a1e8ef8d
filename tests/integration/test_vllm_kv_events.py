"""The vLLM KV event bridge against vLLM's own ZMQ publisher (the one its engine core runs),
real ZMQ on loopback and a real Redis stream into the router's index: the router's chain comes
out, a lost batch is replayed, a batch beyond vLLM's replay buffer clears, and the bridge's
snapshot resyncs the index."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import zmq

from services.router.core.index import BlockIndex
from services.router.index_feed import IndexFeed
from tandem.engines.vllm_kv_events import VllmKVEventBridge
from tandem.hashing import block_hashes, hash_salt
from tandem.kv_events import KVEventPublisher, worker_source

MODEL = "SmolLM2-135M-Instruct"
BS = 4
PROMPT = list(range(500, 540))  # 10 blocks
ROUTER = block_hashes(PROMPT, BS, hash_salt(MODEL))


def vllm_events() -> Any:
    from vllm.distributed import kv_events

    return kv_events


def stored(first: int, last: int) -> Any:
    """vLLM's BlockStored for blocks first..last-1 of PROMPT (vLLM hashes: 1000 + block)."""
    return vllm_events().BlockStored(
        block_hashes=[1000 + b for b in range(first, last)],
        parent_block_hash=None if first == 0 else 1000 + first - 1,
        token_ids=PROMPT[first * BS:last * BS], block_size=BS, lora_id=None, medium="GPU",
        lora_name=None, group_idx=0)


def batch(*events: Any) -> Any:
    return vllm_events().KVEventBatch(ts=time.time(), events=list(events))


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


class Rig:
    """A bridge publishing to a worker stream, vLLM's publisher feeding it, the router's
    index fed from the stream."""

    def __init__(self, client: aioredis.Redis, publisher_options: dict[str, int]) -> None:
        self.namespace = f"t{uuid.uuid4().hex[:8]}"
        self.stream = KVEventPublisher(client, self.namespace, worker_source("v1"))
        self.bridge = VllmKVEventBridge(MODEL, self.stream.publish)
        config = self.bridge.open()
        self.vllm = vllm_events().ZmqEventPublisher(
            0, endpoint=config.endpoint, replay_endpoint=config.replay_endpoint,
            **publisher_options)
        self.index = BlockIndex()
        self.feed = IndexFeed(client, self.namespace, self.index, self.dump, store_tiers=(),
                              block_ms=50)
        self.feed.set_workers(["v1"])

    async def dump(self, worker_id: str) -> tuple[list[bytes], int]:
        hashes = self.bridge.cached_hashes()
        assert hashes is not None
        return hashes, self.stream.last_seq

    async def start(self) -> None:
        """Starts the bridge; returns once vLLM's publisher reaches it (a publisher drops what
        it sends before its subscriber's connection is up, as ZMQ's PUB does)."""
        await self.stream.start()
        self.bridge.start(BS)
        await self.publish_until(lambda: self.bridge.batches)

    async def deafen(self) -> None:
        """Unsubscribes the bridge; returns once vLLM's publisher drops what it sends (an empty
        batch published then is not received)."""
        self.bridge._socket.setsockopt(zmq.UNSUBSCRIBE, b"")
        async with asyncio.timeout(10):
            while True:
                received = self.bridge.batches
                self.vllm.publish(batch())
                await asyncio.sleep(0.3)
                if self.bridge.batches == received:
                    return

    async def hear(self, counter: Callable[[], int]) -> None:
        """Subscribes again and publishes empty batches until the bridge's ``counter`` (its
        replays, or its losses) moves: the first batch received shows the gap."""
        self.bridge._socket.setsockopt(zmq.SUBSCRIBE, b"")
        await self.publish_until(counter)

    async def publish_until(self, counter: Callable[[], int]) -> None:
        before = counter()
        async with asyncio.timeout(10):
            while counter() == before:
                self.vllm.publish(batch())
                await asyncio.sleep(0.05)

    def overlap(self) -> int:
        return self.index.overlaps(ROUTER).device.get("v1", 0)

    async def settle(self, batches: int) -> None:
        """Waits until the bridge applied ``batches`` and the index caught up."""
        await until(lambda: self.bridge.batches >= batches)
        await self.stream.flush()
        for _ in range(3):
            await self.feed.poll(block_ms=50)

    async def close(self) -> None:
        self.vllm.shutdown()
        await self.feed.close()
        await self.bridge.close()
        await self.stream.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_vllm_blocks_reach_the_index_under_the_routers_hashes(
        client: aioredis.Redis) -> None:
    rig = Rig(client, {})
    await rig.start()
    rig.vllm.publish(batch(stored(0, 4)))
    rig.vllm.publish(batch(stored(4, 10)))
    await rig.settle(rig.bridge.batches + 2)
    assert rig.overlap() == 10
    assert rig.bridge.cached_hashes() == ROUTER
    rig.vllm.publish(batch(vllm_events().BlockRemoved(block_hashes=[1006], medium="GPU")))
    await rig.settle(rig.bridge.batches + 1)
    assert rig.overlap() == 6
    rig.vllm.publish(batch(vllm_events().AllBlocksCleared()))
    await rig.settle(rig.bridge.batches + 1)
    assert rig.overlap() == 0 and rig.bridge.cached_hashes() == []
    assert rig.bridge.lost == 0
    await rig.close()


async def test_batches_lost_in_transit_are_replayed(client: aioredis.Redis) -> None:
    rig = Rig(client, {})
    await rig.start()
    rig.vllm.publish(batch(stored(0, 10)))
    await rig.settle(rig.bridge.batches + 1)
    await rig.deafen()
    rig.vllm.publish(batch(vllm_events().BlockRemoved(block_hashes=[1009], medium="GPU")))
    await rig.hear(lambda: rig.bridge.replays)
    await rig.settle(rig.bridge.batches)
    assert rig.bridge.replays >= 1 and rig.bridge.lost == 0
    assert rig.overlap() == 9
    await rig.close()


async def test_batches_beyond_the_replay_buffer_clear_then_the_snapshot_resyncs(
        client: aioredis.Redis) -> None:
    """When vLLM no longer has the missing batches, the bridge announces "cleared" (no stale
    blocks); the router's index follows, and a resync from the bridge's snapshot agrees."""
    rig = Rig(client, {"buffer_steps": 1})
    await rig.start()
    rig.vllm.publish(batch(stored(0, 5)))
    await rig.settle(rig.bridge.batches + 1)
    assert rig.overlap() == 5
    await rig.deafen()
    rig.vllm.publish(batch(stored(5, 10)))
    await rig.hear(lambda: rig.bridge.lost)
    await rig.settle(rig.bridge.batches)
    assert rig.overlap() == 0
    rig.vllm.publish(batch(stored(0, 2)))
    await rig.settle(rig.bridge.batches + 1)
    assert rig.overlap() == 2
    rig.stream.last_seq += 1  # lose a stream entry: the router resyncs from the snapshot
    rig.vllm.publish(batch(stored(2, 3)))
    await rig.settle(rig.bridge.batches + 1)
    await until(lambda: rig.feed.resyncs == 1)
    assert rig.overlap() == 3
    await rig.close()
