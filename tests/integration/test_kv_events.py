"""KV event streams on a real Redis: order, batching, trimming gaps, resync, restarts."""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from tandem.kv_events import (
    KVEventConsumer,
    KVEventPublisher,
    split_hashes,
    stream_key,
    worker_source,
)


def h(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def drain(consumer: KVEventConsumer) -> tuple[list[tuple[str, int, str]], set[str]]:
    seen: list[tuple[str, int, str]] = []
    gaps: set[str] = set()
    while True:
        batches = await consumer.read(block_ms=50)
        if not batches:
            return seen, gaps
        for batch in batches:
            seen.extend((batch.source, e.seq, e.type) for e in batch.events)
            if batch.gap:
                gaps.add(batch.source)


async def test_publish_and_consume_in_order(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    source = worker_source("w1")
    publisher = KVEventPublisher(client, namespace, source)
    await publisher.start()
    assert publisher.publish("stored", [h(1), h(2)], parent=b"") == 1
    publisher.publish("removed", [h(2)])
    publisher.publish("cleared", [])
    await publisher.flush()
    raw: Any = await client.xrange(stream_key(namespace, source))
    assert [int(f[b"seq"]) for _, f in raw] == [1, 2, 3]
    assert split_hashes(raw[0][1][b"hashes"]) == [h(1), h(2)]
    assert raw[0][1][b"tier"] == b"device"

    consumer = KVEventConsumer(client, namespace)
    consumer.follow(source)
    seen, gaps = await drain(consumer)
    assert seen == [(source, 1, "stored"), (source, 2, "removed"), (source, 3, "cleared")]
    assert not gaps
    await publisher.close()
    await client.aclose()


async def test_gap_then_resync_rereads_uncovered_events(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    source = worker_source("w2")
    publisher = KVEventPublisher(client, namespace, source)
    await publisher.start()
    for n in range(5):
        publisher.publish("stored", [h(n)])
    await publisher.flush()
    # Lose events 2 and 3 (as trimming or a failed write would).
    entries: Any = await client.xrange(stream_key(namespace, source))
    await client.xdel(stream_key(namespace, source), entries[1][0], entries[2][0])

    consumer = KVEventConsumer(client, namespace)
    consumer.follow(source)
    seen, gaps = await drain(consumer)
    assert seen == [(source, 1, "stored")] and gaps == {source}
    # A snapshot covering up to seq 4: only seq 5 is still to apply.
    consumer.resynced(source, snapshot_seq=4)
    seen, gaps = await drain(consumer)
    assert seen == [(source, 5, "stored")] and not gaps
    await publisher.close()
    await client.aclose()


async def test_restarted_publisher_continues_sequence(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    source = worker_source("w3")
    first = KVEventPublisher(client, namespace, source)
    await first.start()
    first.publish("stored", [h(1)])
    await first.close()
    second = KVEventPublisher(client, namespace, source)
    await second.start()
    assert second.publish("cleared", []) == 2
    await second.close()
    consumer = KVEventConsumer(client, namespace)
    consumer.follow(source)
    seen, gaps = await drain(consumer)
    assert [seq for _, seq, _ in seen] == [1, 2] and not gaps
    await client.aclose()


async def test_trimming_keeps_streams_bounded(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    source = worker_source("w4")
    publisher = KVEventPublisher(client, namespace, source, max_len=100)
    await publisher.start()
    for n in range(2000):
        publisher.publish("stored", [h(n)])
    await publisher.flush()
    assert await client.xlen(stream_key(namespace, source)) < 400
    consumer = KVEventConsumer(client, namespace)
    consumer.follow(source)
    _, gaps = await drain(consumer)
    assert gaps == {source}  # a late reader finds the head trimmed: resync
    await publisher.close()
    await client.aclose()
