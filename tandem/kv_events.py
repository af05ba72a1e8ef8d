"""KV events on Redis Streams: one ordered stream per source, resumable, with gap detection.

Stream key ``<namespace>:kv-events:<source>``, source ``worker:<worker_id>`` or
``store:<tier>``. Each entry has the fields

- ``seq``: monotonic integer per stream (1, 2, 3, ...; a restarted publisher continues from
  the last entry it finds in the stream);
- ``type``: ``stored`` | ``removed`` | ``cleared`` | ``moved``;
- ``hashes``: the blocks' 16-byte chained hashes, concatenated;
- ``parent``: the 16-byte hash of the first block's parent, or empty;
- ``tier``: where the blocks now are (``device`` on worker streams; a store tier, or for
  ``moved`` the tier the blocks moved to).

``cleared`` means the source holds nothing any more (a restart, a reset). ``moved`` means the
hashes left this source's tier for ``tier``. A consumer that sees ``seq`` jump (entries lost,
or trimmed before it read them) asks for a resync: a full snapshot of the source's state with
the last ``seq`` it covers, after which it re-reads the stream from where the gap started and
skips what the snapshot already covers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from tandem.hashing import HASH_BYTES

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset({"stored", "removed", "cleared", "moved"})
DEVICE_TIER = "device"
START_ID = b"0-0"


def stream_key(namespace: str, source: str) -> str:
    return f"{namespace}:kv-events:{source}"


def worker_source(worker_id: str) -> str:
    return f"worker:{worker_id}"


def store_source(tier: str) -> str:
    return f"store:{tier}"


def split_hashes(packed: bytes) -> list[bytes]:
    """Concatenated 16-byte hashes back into a list."""
    if len(packed) % HASH_BYTES:
        raise ValueError(f"hashes field of {len(packed)} bytes is not a multiple of {HASH_BYTES}")
    return [packed[i:i + HASH_BYTES] for i in range(0, len(packed), HASH_BYTES)]


@dataclasses.dataclass(frozen=True)
class KVEvent:
    """One entry of a KV event stream."""

    seq: int
    type: str
    hashes: list[bytes]
    parent: bytes = b""
    tier: str = DEVICE_TIER

    def encode(self) -> dict[str, bytes]:
        return {"seq": str(self.seq).encode(), "type": self.type.encode(),
                "hashes": b"".join(self.hashes), "parent": self.parent,
                "tier": self.tier.encode()}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> KVEvent:
        event_type = fields[b"type"].decode()
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown KV event type {event_type!r}")
        return cls(int(fields[b"seq"]), event_type, split_hashes(fields.get(b"hashes", b"")),
                   fields.get(b"parent", b""), fields.get(b"tier", b"").decode())


class KVEventPublisher:
    """Publishes one source's events in order. ``publish`` is synchronous and cheap (it assigns
    the sequence number and buffers); a background task writes buffered events with one
    pipelined round trip of ``XADD ... MAXLEN ~ max_len``, ``batch_s`` after the first of them
    (0: as soon as it runs), so a busy source pays one round trip for many events."""

    def __init__(
        self, client: aioredis.Redis, namespace: str, source: str, tier: str = DEVICE_TIER,
        max_len: int = 100_000, max_buffer: int = 100_000, batch_s: float = 0.0,
    ) -> None:
        self.client = client
        self.key = stream_key(namespace, source)
        self.source = source
        self.tier = tier
        self.max_len = max_len
        self.max_buffer = max_buffer
        self.batch_s = batch_s
        self.last_seq = 0
        """Sequence number of the last event published (buffered or written)."""
        self.dropped = 0
        """Events lost to Redis errors or a full buffer (readers see the gap and resync)."""
        self._buffer: list[KVEvent] = []
        self._has_data = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Continues the sequence of an existing stream, then starts the writer."""
        last: Any = await self.client.xrevrange(self.key, count=1)
        if last:
            self.last_seq = max(self.last_seq, int(last[0][1][b"seq"]))
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name=f"kv-events {self.source}")

    def publish(
        self, event_type: str, hashes: Sequence[bytes], parent: bytes = b"",
        tier: str | None = None,
    ) -> int:
        """Queues one event; returns its sequence number."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown KV event type {event_type!r}")
        self.last_seq += 1
        if len(self._buffer) >= self.max_buffer:
            self.dropped += 1
        else:
            self._buffer.append(KVEvent(self.last_seq, event_type, list(hashes), parent,
                                        tier or self.tier))
            self._has_data.set()
        return self.last_seq

    async def flush(self) -> None:
        """Writes everything buffered so far."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        pipe = self.client.pipeline(transaction=False)
        for event in batch:
            pipe.xadd(self.key, event.encode(),  # type: ignore[arg-type]
                      maxlen=self.max_len, approximate=True)
        try:
            await pipe.execute()
        except Exception:
            self.dropped += len(batch)
            log.warning("KV event write failed; readers will resync", exc_info=True,
                        extra={"source": self.source, "events": len(batch)})

    async def _writer(self) -> None:
        while not self._closing:
            await self._has_data.wait()
            if self.batch_s and not self._closing:
                await asyncio.sleep(self.batch_s)
            self._has_data.clear()
            await self.flush()

    async def close(self) -> None:
        """Writes what is buffered and stops. The writer is told to end after its write in
        flight rather than cancelled: a cancellation can be lost inside a Redis call (redis-py
        8.0-8.2), and the writer would then wait for events forever."""
        if self._task is not None:
            self._closing = True
            self._has_data.set()
            await self._task
            self._task = None
        await self.flush()


@dataclasses.dataclass
class _Cursor:
    stream_id: bytes = START_ID
    seq: int = 0
    in_order_id: bytes = START_ID
    """Id of the last entry delivered in order (where a resync re-reads from)."""
    awaiting_resync: bool = False


@dataclasses.dataclass(frozen=True)
class SourceBatch:
    """Events of one source, in order; ``gap`` says a resync is needed before any more."""

    source: str
    events: list[KVEvent]
    gap: bool = False
    gap_seq: int = 0
    """With ``gap``: the seq of the first entry found after the missing ones."""


class KVEventConsumer:
    """Follows many sources with one blocking ``XREAD``; delivers in-order events per source,
    reports gaps, and after ``resynced`` re-reads from the gap skipping covered events."""

    def __init__(
        self, client: aioredis.Redis, namespace: str, block_ms: int = 1000, count: int = 1000
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.block_ms = block_ms
        self.count = count
        self._cursors: dict[str, _Cursor] = {}
        self._sources_by_key: dict[str, str] = {}

    @property
    def sources(self) -> list[str]:
        return list(self._cursors)

    def follow(self, source: str, stream_id: bytes = START_ID, seq: int = 0) -> None:
        """Starts following ``source`` after ``stream_id`` (the start: its whole history)."""
        if source not in self._cursors:
            self._cursors[source] = _Cursor(stream_id, seq, stream_id)
            self._sources_by_key[stream_key(self.namespace, source)] = source

    def unfollow(self, source: str) -> None:
        self._cursors.pop(source, None)
        self._sources_by_key.pop(stream_key(self.namespace, source), None)

    def resynced(self, source: str, snapshot_seq: int) -> None:
        """The caller replaced the source's state by a snapshot covering up to
        ``snapshot_seq``: read again from the gap, skipping what the snapshot covers."""
        cursor = self._cursors.get(source)
        if cursor is not None:
            cursor.seq = snapshot_seq
            cursor.stream_id = cursor.in_order_id
            cursor.awaiting_resync = False

    def position(self, source: str) -> tuple[bytes, int] | None:
        """(stream id, seq) of the last in-order event of ``source``, to resume later."""
        cursor = self._cursors.get(source)
        return None if cursor is None else (cursor.in_order_id, cursor.seq)

    async def read(self, block_ms: int | None = None) -> list[SourceBatch]:
        """One round: waits up to ``block_ms`` for new entries on any followed source."""
        streams = {stream_key(self.namespace, source): cursor.stream_id
                   for source, cursor in self._cursors.items() if not cursor.awaiting_resync}
        if not streams:
            return []
        reply: Any = await self.client.xread(
            streams, count=self.count,  # type: ignore[arg-type]
            block=self.block_ms if block_ms is None else block_ms,
        )
        if isinstance(reply, dict):  # RESP3 shape
            reply = list(reply.items())
        batches: list[SourceBatch] = []
        for raw_key, entries in reply or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            source = self._sources_by_key.get(key)
            if source is not None:
                batches.append(self._accept(source, entries))
        return batches

    def _accept(self, source: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> SourceBatch:
        cursor = self._cursors[source]
        events: list[KVEvent] = []
        for entry_id, fields in entries:
            cursor.stream_id = entry_id
            event = KVEvent.decode(fields)
            if event.type == "cleared" or event.seq == cursor.seq + 1:
                pass  # in order (a clear resets the state whatever came before)
            elif event.seq <= cursor.seq:
                cursor.in_order_id = entry_id
                continue  # covered by a snapshot already, or re-read
            else:
                cursor.awaiting_resync = True
                log.info("KV event gap", extra={"source": source, "expected": cursor.seq + 1,
                                                "got": event.seq})
                return SourceBatch(source, events, gap=True, gap_seq=event.seq)
            cursor.seq = event.seq
            cursor.in_order_id = entry_id
            events.append(event)
        return SourceBatch(source, events)
