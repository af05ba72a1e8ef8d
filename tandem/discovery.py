"""Service discovery in Redis: leases, heartbeats, and a watcher that never returns the dead.

A worker writes ``<ns>:worker:<id>`` with a TTL (its lease) and renews it every
``ttl / 3``; it is also a member of the ``<ns>:workers`` index set. A worker whose lease lapses
(crash, partition) disappears from every watcher at its next refresh; a clean shutdown deletes
its key at once. Watchers also let the caller quarantine a worker whose calls fail, until the
worker proves alive by renewing its lease after the quarantine started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from tandem.service.lifecycle import Periodic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """What a worker announces about itself."""

    worker_id: str
    role: str  # "decode" or "prefill"
    address: str  # gRPC host:port
    model: str
    engine: str
    max_model_len: int
    block_size: int
    host: str
    heartbeat_at: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        data = orjson.loads(raw)
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})


def worker_key(namespace: str, worker_id: str) -> str:
    return f"{namespace}:worker:{worker_id}"


def index_key(namespace: str) -> str:
    return f"{namespace}:workers"


class Registration:
    """Keeps one worker's lease alive until ``close``."""

    def __init__(
        self, client: aioredis.Redis, info: WorkerInfo, namespace: str, lease_ttl_s: float
    ) -> None:
        self.client = client
        self.info = info
        self.namespace = namespace
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.heartbeat = Periodic("lease renewal", lease_ttl_s / 3, self._renew)

    async def open(self) -> None:
        await self._renew()
        await self.client.sadd(index_key(self.namespace), self.info.worker_id)
        self.heartbeat.start()  # a Redis blip is retried; the lease covers two misses

    async def _renew(self) -> None:
        info = dataclasses.replace(self.info, heartbeat_at=time.time())
        await self.client.set(
            worker_key(self.namespace, info.worker_id), info.to_json(), px=self.lease_ttl_ms
        )

    async def close(self) -> None:
        await self.heartbeat.close()
        with contextlib.suppress(Exception):
            await self.client.delete(worker_key(self.namespace, self.info.worker_id))
            await self.client.srem(index_key(self.namespace), self.info.worker_id)


class WorkerWatcher:
    """The live workers, refreshed from Redis every ``interval_s``."""

    def __init__(self, client: aioredis.Redis, namespace: str, interval_s: float = 0.5) -> None:
        self.client = client
        self.namespace = namespace
        self.interval_s = interval_s
        self.workers: dict[str, WorkerInfo] = {}
        self._quarantined: dict[str, float] = {}
        self._refresher = Periodic("discovery refresh", interval_s, self.refresh)
        self.listeners: list[Callable[[dict[str, WorkerInfo]], None]] = []
        """Called with the live workers whenever the set changes."""

    async def refresh(self) -> dict[str, WorkerInfo]:
        ids = sorted(m.decode() if isinstance(m, bytes) else m
                     for m in await self.client.smembers(index_key(self.namespace)))
        raws = await self.client.mget([worker_key(self.namespace, i) for i in ids]) if ids else []
        live: dict[str, WorkerInfo] = {}
        lapsed: list[str] = []
        for worker_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                lapsed.append(worker_id)
                continue
            info = WorkerInfo.from_json(raw)
            since = self._quarantined.get(worker_id)
            if since is not None:
                if info.heartbeat_at <= since:
                    continue
                del self._quarantined[worker_id]
            live[worker_id] = info
        if lapsed:
            await self.client.srem(index_key(self.namespace), *lapsed)
        changed = live.keys() != self.workers.keys()
        self.workers = live
        if changed:
            log.info("workers changed", extra={"workers": sorted(live)})
            for listener in self.listeners:
                listener(live)
        return live

    def quarantine(self, worker_id: str) -> None:
        """Stops returning a worker whose calls failed, until it renews its lease again."""
        self._quarantined[worker_id] = time.time()
        self.workers.pop(worker_id, None)

    def of_role(self, role: str, model: str | None = None) -> list[WorkerInfo]:
        return [w for w in self.workers.values()
                if w.role == role and (model is None or w.model == model)]

    async def start(self) -> None:
        await self.refresh()
        self._refresher.start()

    async def close(self) -> None:
        await self._refresher.close()
