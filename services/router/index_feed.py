"""Feeds the block index from the KV event streams of the live workers and the store tiers.

A worker that appears is followed from the start of its stream (its whole retained history;
a trimmed head shows as a gap). A gap on a worker's stream triggers a resync: the worker's
snapshot (WorkerService.DumpKVState) replaces its entries, then the stream is re-read from
the gap, skipping what the snapshot covers. A worker whose lease lapsed is removed from the
index. Nothing is read while the routing policy reads no index (``wanted``): a
load-only policy costs no event decoding per request. The KV store has no snapshot call yet:
a gap on a ``store:<tier>`` stream clears that tier in the index (fewer hits, never stale
ones) and continues after the gap.

Redis away: reads are retried with jittered backoff; once a read works again every worker is
resynced (a Redis that restarted empty lost the events not read yet, and a lost tail shows no
gap until the worker's next event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis

from services.router.core.index import BlockIndex
from tandem.kv_events import KVEventConsumer, SourceBatch, store_source, worker_source
from tandem.restart_policy import jittered_backoff
from tandem.service.channels import aio_channel
from tandem.service.groups import GrpcSettings
from tandem.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

Snapshot = tuple[list[bytes], int]
"""Block hashes a worker holds, and the seq of the last KV event the snapshot covers."""
DumpState = Callable[[str], Awaitable[Snapshot]]
"""Fetches one worker's snapshot, by worker id."""


def grpc_dump_state(address_of: Callable[[str], str | None], timeout_s: float = 5.0,
                    grpc_settings: GrpcSettings | None = None) -> DumpState:
    """A ``DumpState`` calling WorkerService.DumpKVState at the worker's address."""

    async def dump(worker_id: str) -> Snapshot:
        address = address_of(worker_id)
        if address is None:
            raise LookupError(f"no address for worker {worker_id}")
        async with aio_channel(address, grpc_settings) as channel:
            stub = worker_pb2_grpc.WorkerServiceStub(channel)
            reply = await stub.DumpKVState(worker_pb2.DumpKVStateRequest(), timeout=timeout_s)
        return list(reply.block_hashes), int(reply.last_event_sequence)

    return dump


class IndexFeed:
    """Keeps ``index`` up to date. Call ``set_workers`` whenever discovery changes."""

    def __init__(
        self, client: aioredis.Redis, namespace: str, index: BlockIndex, dump_state: DumpState,
        store_tiers: Iterable[str] = ("cxl", "nvme"), block_ms: int = 500,
        resync_retry_s: float = 1.0, min_interval_s: float = 0.0,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.index = index
        self.dump_state = dump_state
        self.consumer = KVEventConsumer(client, namespace, block_ms=block_ms)
        self.resync_retry_s = resync_retry_s
        self.min_interval_s = min_interval_s
        """Shortest time between two reads: events arriving meanwhile are read together."""
        self.wanted = wanted
        """Whether anyone reads the index now (the routing policy): while not, no stream is
        read; the cursors stay where they are, so the feed catches up from the streams'
        retained history when it is wanted again (a trimmed head shows as a gap: resync)."""
        self.applied_events = 0
        self.resyncs = 0
        self._workers: set[str] = set()
        self._resyncing: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        for tier in store_tiers:
            self.consumer.follow(store_source(tier))

    def set_workers(self, worker_ids: Iterable[str]) -> None:
        """Follows new workers; forgets workers no longer live (lease lapsed)."""
        live = set(worker_ids)
        for worker_id in live - self._workers:
            self.consumer.follow(worker_source(worker_id))
        for worker_id in self._workers - live:
            source = worker_source(worker_id)
            self.consumer.unfollow(source)
            self.index.remove_source(source)
            task = self._resyncing.pop(source, None)
            if task is not None:
                task.cancel()
        self._workers = live

    def apply(self, batch: SourceBatch) -> None:
        for event in batch.events:
            self.index.apply(batch.source, event)
        self.applied_events += len(batch.events)
        if batch.gap:
            self._on_gap(batch)

    def _on_gap(self, batch: SourceBatch) -> None:
        source = batch.source
        if not source.startswith("worker:"):
            self.index.cleared(source)
            self.consumer.resynced(source, batch.gap_seq - 1)
            return
        self._start_resync(source)

    def _start_resync(self, source: str) -> None:
        if source not in self._resyncing:
            self._resyncing[source] = asyncio.create_task(self._resync(source))

    def resync_all(self) -> None:
        """Replaces every worker's entries by its snapshot (after a Redis outage)."""
        for worker_id in self._workers:
            self._start_resync(worker_source(worker_id))

    async def _resync(self, source: str) -> None:
        worker_id = source.removeprefix("worker:")
        try:
            while worker_id in self._workers and not self._closing:
                try:
                    hashes, last_seq = await self.dump_state(worker_id)
                except Exception:
                    log.warning("KV resync failed; retrying", exc_info=True,
                                extra={"worker": worker_id})
                    await asyncio.sleep(self.resync_retry_s)
                    continue
                if worker_id in self._workers:
                    self.index.replace(source, hashes)
                    self.consumer.resynced(source, last_seq)
                    self.resyncs += 1
                return
        finally:
            self._resyncing.pop(source, None)

    async def poll(self, block_ms: int | None = None) -> int:
        """One read round; returns the events applied."""
        before = self.applied_events
        for batch in await self.consumer.read(block_ms):
            self.apply(batch)
        return self.applied_events - before

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                if not self.consumer.sources or not self.wanted():
                    await asyncio.sleep(self.consumer.block_ms / 1000)
                    continue
                started = time.monotonic()
                await self.poll()
                if failures:
                    log.info("KV event feed reads again; resyncing every worker",
                             extra={"failures": failures})
                    failures = 0
                    self.resync_all()
                rest = self.min_interval_s - (time.monotonic() - started)
                if rest > 0:
                    await asyncio.sleep(rest)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closing:
                    break
                failures += 1
                if failures == 1:
                    log.warning("KV event feed read failed; retrying with backoff",
                                exc_info=True)
                await asyncio.sleep(jittered_backoff(
                    failures, self.resync_retry_s / 10, self.resync_retry_s, random.random()))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="index-feed")

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (self._task, *self._resyncing.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
