"""KV event streams on a real Redis: order, batching, trimming gaps, resync, restarts."""

from __future__ import annotations

import asyncio
import time
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


async def test_mock_engine_events_feed_the_index_and_resync(redis_url: str) -> None:
    from services.router.core.index import BlockIndex
    from services.router.index_feed import IndexFeed
    from tandem.engines.base import EngineRequest, Sampling
    from tandem.engines.mock import MockEngine, MockSettings
    from tandem.hashing import block_hashes, hash_salt

    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    engine = MockEngine(MockSettings(block_size=4, num_blocks=64))
    publisher = KVEventPublisher(client, namespace, worker_source("m1"))
    await publisher.start()
    engine.set_kv_event_sink(publisher.publish)
    await engine.start()
    prompt = list(range(40, 61))
    async for _ in engine.generate(EngineRequest("q1", prompt, Sampling(max_tokens=2))):
        pass
    await publisher.flush()

    async def dump(worker_id: str) -> tuple[list[bytes], int]:
        return engine.dump_kv_state(), publisher.last_seq

    index = BlockIndex()
    feed = IndexFeed(client, namespace, index, dump, store_tiers=(), block_ms=50)
    feed.set_workers(["m1"])
    await feed.poll()
    expected = block_hashes(prompt, 4, hash_salt("SmolLM2-135M-Instruct"))
    assert index.overlaps(expected).device == {"m1": 5}

    # Lose an event: the feed resyncs from the worker's snapshot.
    publisher.last_seq += 1
    async for _ in engine.generate(EngineRequest("q2", list(range(100, 109)),
                                                 Sampling(max_tokens=1))):
        pass
    await publisher.flush()
    await feed.poll()
    for _ in range(20):
        if feed.resyncs:
            break
        await asyncio.sleep(0.01)
    assert feed.resyncs == 1
    second = block_hashes(list(range(100, 109)), 4, hash_salt("SmolLM2-135M-Instruct"))
    assert index.overlaps(second).device == {"m1": 2}
    feed.set_workers([])  # lease lapsed
    assert index.overlaps(expected).device == {} and index.sources == []
    await feed.close()
    await engine.shutdown()
    await publisher.close()
    await client.aclose()


async def test_feed_reads_events_of_one_interval_together(redis_url: str) -> None:
    """With a minimum interval, events that arrive while the feed waits are read in one round
    trip, and none is lost or late beyond the interval."""
    from services.router.core.index import BlockIndex
    from services.router.index_feed import IndexFeed

    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    publisher = KVEventPublisher(client, namespace, worker_source("w1"))
    await publisher.start()

    async def dump(worker_id: str) -> tuple[list[bytes], int]:
        raise AssertionError("no gap, no resync")

    index = BlockIndex()
    feed = IndexFeed(client, namespace, index, dump, store_tiers=(), block_ms=50,
                     min_interval_s=0.25)
    reads = 0
    read = feed.consumer.read

    async def counted(block_ms: int | None = None) -> Any:
        nonlocal reads
        reads += 1
        return await read(block_ms)

    feed.consumer.read = counted  # type: ignore[method-assign]
    feed.set_workers(["w1"])
    await feed.start()
    parent = b""
    for n in range(10):  # one event every 20 ms: 200 ms in all
        publisher.publish("stored", [h(n)], parent=parent)
        parent = h(n)
        await publisher.flush()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # one more interval: everything is applied
    assert feed.applied_events == 10
    assert index.overlaps([h(n) for n in range(10)]).device == {"w1": 10}
    assert reads <= 4, reads  # one read per event would be 10 or more
    await feed.close()
    await publisher.close()
    await client.aclose()


async def test_feed_reads_nothing_while_no_policy_reads_the_index(redis_url: str) -> None:
    """A load-only routing policy reads no index: the feed decodes no event meanwhile, and
    catches up from the stream when the index is wanted again (nothing lost, no resync)."""
    from services.router.core.index import BlockIndex
    from services.router.index_feed import IndexFeed

    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    publisher = KVEventPublisher(client, namespace, worker_source("w1"))
    await publisher.start()

    async def dump(worker_id: str) -> tuple[list[bytes], int]:
        raise AssertionError("no gap, no resync")

    wanted = False
    index = BlockIndex()
    feed = IndexFeed(client, namespace, index, dump, store_tiers=(), block_ms=50,
                     wanted=lambda: wanted)
    feed.set_workers(["w1"])
    await feed.start()
    parent = b""
    for n in range(5):
        publisher.publish("stored", [h(n)], parent=parent)
        parent = h(n)
    await publisher.flush()
    await asyncio.sleep(0.3)
    assert feed.applied_events == 0 and index.overlaps([h(0)]).device == {}
    wanted = True  # e.g. the routing policy became kv
    for _ in range(50):
        if feed.applied_events == 5:
            break
        await asyncio.sleep(0.02)
    assert index.overlaps([h(n) for n in range(5)]).device == {"w1": 5}
    await feed.close()
    await publisher.close()
    await client.aclose()


async def test_close_ends_the_writer_while_events_keep_coming(redis_url: str) -> None:
    """A worker's close (its drain's last step) must not wait forever: the writer ends even
    when close lands inside a Redis write and the cancellation does not come back out (redis-py
    8.0-8.2 lost it: 98-144 of 200 closes hung; the client here turns it into an ordinary error,
    as DESIGN.md's pitfall says redis-py can, so the test bites whatever redis-py is installed)."""
    client = aioredis.Redis.from_url(redis_url)
    real_pipeline = client.pipeline

    def cancel_eating_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def eating(*a: Any, **k: Any) -> Any:
            try:
                return await execute(*a, **k)
            except asyncio.CancelledError:
                raise ConnectionError("cancelled mid-command") from None

        pipe.execute = eating  # type: ignore[method-assign]
        return pipe

    client.pipeline = cancel_eating_pipeline  # type: ignore[method-assign]
    namespace = f"t{uuid.uuid4().hex[:8]}"
    for trial in range(100):
        publisher = KVEventPublisher(client, namespace, worker_source(f"w{trial}"))
        await publisher.start()

        async def keep_publishing(publisher: KVEventPublisher = publisher) -> None:
            while True:
                publisher.publish("stored", [h(1), h(2)])
                await asyncio.sleep(0)

        feeder = asyncio.create_task(keep_publishing())
        await asyncio.sleep(trial % 10 / 1000)
        feeder.cancel()  # the writer is mid-write: close lands at every point of one
        asked = time.monotonic()
        await asyncio.wait_for(publisher.close(), 5.0)
        assert time.monotonic() - asked < 1.0, f"close took {time.monotonic() - asked:.1f} s"
        raw: Any = await client.xrevrange(stream_key(namespace, worker_source(f"w{trial}")),
                                          count=1)
        assert int(raw[0][1][b"seq"]) == publisher.last_seq  # the last event written too
    await client.aclose()


async def test_events_of_a_batch_window_go_together_after_it(redis_url: str) -> None:
    """With ``batch_s`` the writer waits that long after the first event, then writes
    everything published meanwhile; a close does not lose what the window held."""
    client = aioredis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    key = stream_key(namespace, worker_source("w1"))
    publisher = KVEventPublisher(client, namespace, worker_source("w1"), batch_s=0.3)
    await publisher.start()
    try:
        publisher.publish("stored", [h(1)])
        await asyncio.sleep(0.1)
        for n in range(2, 11):
            publisher.publish("stored", [h(n)], parent=h(n - 1))
        await asyncio.sleep(0.05)
        assert await client.xlen(key) == 0  # still inside the window
        await asyncio.sleep(0.3)
        assert await client.xlen(key) == 10  # all of it, in one write after the window
        publisher.publish("removed", [h(10)])
    finally:
        await publisher.close()
        assert await client.xlen(key) == 11
        await client.aclose()
