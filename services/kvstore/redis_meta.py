"""KV-store metadata in Redis, and the block events published to Redis Streams.

Keys (``P`` = ``<namespace>:kvstore:<store>``):
``P:blocks`` hash, block hash -> committed record (``reconcile.Record``);
``P:writing`` hash, block hash -> reservation (tier, slot, generation, deadline);
``P:lru:<tier>`` sorted set, block hash -> last access (s); ``P:lease:<id>`` pinned hashes with
the lease TTL; ``P:epoch`` start counter (the high half of every generation).
Events: ``<namespace>:kv-events:store:<tier>`` through ``tandem.kv_events`` (seq, type, hashes,
parent, tier; ``moved`` is published on the source tier's stream with the destination tier).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from services.kvstore.core.metadata import Block
from services.kvstore.core.reconcile import Record
from tandem.kv_events import KVEventPublisher, store_source

EVENT_STREAM_MAXLEN = 100_000


def record_of(block: Block) -> Record:
    return Record(block.tier, block.slot, block.size, block.checksum, block.generation,
                  block.parent, block.path)


class RedisMeta:
    def __init__(self, client: aioredis.Redis, namespace: str, store: str,
                 tiers: Sequence[str]) -> None:
        self.client: Any = client  # binary replies (decode_responses=False)
        self.namespace = namespace
        self.prefix = f"{namespace}:kvstore:{store}"
        self.blocks_key = f"{self.prefix}:blocks"
        self.writing_key = f"{self.prefix}:writing"
        self.tiers = list(tiers)
        self.publishers = {tier: KVEventPublisher(client, namespace, store_source(tier), tier,
                                                  max_len=EVENT_STREAM_MAXLEN)
                           for tier in self.tiers}

    def lru_key(self, tier: str) -> str:
        return f"{self.prefix}:lru:{tier}"

    def lease_key(self, lease_id: str) -> str:
        return f"{self.prefix}:lease:{lease_id}"

    def stream_key(self, tier: str) -> str:
        return f"{self.namespace}:kv-events:store:{tier}"

    # --- start-up -----------------------------------------------------------------------------
    async def next_epoch(self) -> int:
        return int(await self.client.incr(f"{self.prefix}:epoch"))

    async def load(self) -> tuple[dict[bytes, Record], set[bytes], dict[bytes, float]]:
        raw_blocks = await self.client.hgetall(self.blocks_key)
        blocks = {}
        for key, value in raw_blocks.items():
            record = Record.decode(value)
            if record is not None:
                blocks[bytes(key)] = record
        writing = {bytes(key) for key in await self.client.hkeys(self.writing_key)}
        last_access: dict[bytes, float] = {}
        for tier in self.tiers:
            for member, score in await self.client.zrange(self.lru_key(tier), 0, -1,
                                                          withscores=True):
                last_access[bytes(member)] = float(score)
        for publisher in self.publishers.values():
            await publisher.start()  # continues each stream's seq
        return blocks, writing, last_access

    async def close(self) -> None:
        for publisher in self.publishers.values():
            await publisher.close()

    async def live_leases(self) -> dict[str, tuple[list[bytes], int]]:
        """Leases still alive in Redis (pins that survive a store restart): id -> (hashes, ms)."""
        out: dict[str, tuple[list[bytes], int]] = {}
        async for key in self.client.scan_iter(match=self.lease_key("*"), count=1000):
            raw = await self.client.get(key)
            ttl = await self.client.pttl(key)
            if raw is None or ttl <= 0:
                continue
            lease_id = bytes(key).decode().rsplit(":", 1)[1]
            out[lease_id] = ([raw[i:i + 16] for i in range(0, len(raw), 16)], int(ttl))
        return out

    async def rewrite(self, blocks: Sequence[Block]) -> None:
        """Replaces the metadata with the reconciled truth."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.blocks_key, self.writing_key, *[self.lru_key(t) for t in self.tiers])
        for start in range(0, len(blocks), 1000):
            batch = blocks[start:start + 1000]
            pipe.hset(self.blocks_key, mapping={b.block_hash: record_of(b).encode()
                                                for b in batch})
            for tier in self.tiers:
                members = {b.block_hash: b.last_access for b in batch if b.tier == tier}
                if members:
                    pipe.zadd(self.lru_key(tier), members)
        await pipe.execute()

    # --- pipelined updates --------------------------------------------------------------------
    def pipeline(self) -> Any:
        return self.client.pipeline(transaction=False)

    def save_writing(self, pipe: Any, blocks: Sequence[Block]) -> None:
        """Reservations, one command whatever their number."""
        if blocks:
            pipe.hset(self.writing_key, mapping={
                b.block_hash: f"{b.tier}|{b.slot}|{b.generation}|{b.deadline:.3f}".encode()
                for b in blocks})

    def save_committed(self, pipe: Any, blocks: Sequence[Block],
                       moved_from: str | None = None) -> None:
        """Committed records, their reservations dropped, their LRU entries: a few commands
        whatever the number of blocks (the commit of a 64-block chain is one round trip of
        four commands, not 192)."""
        if not blocks:
            return
        hashes = [b.block_hash for b in blocks]
        pipe.hset(self.blocks_key, mapping={b.block_hash: record_of(b).encode() for b in blocks})
        pipe.hdel(self.writing_key, *hashes)
        if moved_from is not None:
            pipe.zrem(self.lru_key(moved_from), *hashes)
        self.touch(pipe, blocks)

    def drop_writing(self, pipe: Any, block_hash: bytes) -> None:
        pipe.hdel(self.writing_key, block_hash)

    def delete(self, pipe: Any, block: Block) -> None:
        pipe.hdel(self.blocks_key, block.block_hash)
        pipe.hdel(self.writing_key, block.block_hash)
        pipe.zrem(self.lru_key(block.tier), block.block_hash)

    def touch(self, pipe: Any, blocks: Sequence[Block]) -> None:
        for tier in {b.tier for b in blocks}:
            pipe.zadd(self.lru_key(tier), {b.block_hash: b.last_access
                                           for b in blocks if b.tier == tier})

    def save_lease(self, pipe: Any, lease_id: str, hashes: Sequence[bytes], ttl_ms: int) -> None:
        pipe.set(self.lease_key(lease_id), b"".join(hashes), px=max(ttl_ms, 1))

    def drop_lease(self, pipe: Any, lease_id: str) -> None:
        pipe.delete(self.lease_key(lease_id))

    def event(self, tier: str, kind: str, hashes: Sequence[bytes], parent: bytes = b"",
              to_tier: str | None = None) -> None:
        """Publishes one event (stored | removed | cleared | moved) on the tier's stream
        (``tandem.kv_events``); ``moved`` carries the tier the blocks went to."""
        self.publishers[tier].publish(kind, hashes, parent, to_tier)
