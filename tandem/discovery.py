"""Service discovery in Redis: leases, heartbeats, and a watcher that never returns the dead.

A worker writes ``<ns>:worker:<id>`` with a TTL (its lease) and renews it every
``ttl / 3``, each time also adding itself to the ``<ns>:workers`` index set (so a Redis that
restarted empty has both back within a renewal). A worker whose lease lapses (crash, partition)
disappears from every watcher at its next refresh; a clean shutdown deletes its key at once.
A worker announces its state: ``starting`` from the moment its gRPC server is up (the engine
loads, the canary runs; nothing is routed to it), ``serving`` once its canary passed,
``draining`` from the moment
it is told to stop (it takes no new request; the router filters it out). Watchers also let the
caller quarantine a worker whose calls fail, until the worker proves alive by renewing its
lease after the quarantine started.

Redis away: a watcher keeps the workers it knows (a failed refresh changes nothing) and retries
with jittered backoff. Once Redis answers again, the workers it knew do not vanish for want of
their keys - a Redis that came back empty (its ``run_id`` changed) has none, and one that hung
(paused) expired every lease whose TTL passed meanwhile, the moment it ran again: each is kept
for its lease TTL, the time it has to register again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Literal

import orjson
import redis.asyncio as aioredis

from tandem.service.lifecycle import Periodic

log = logging.getLogger(__name__)

WorkerState = Literal["starting", "serving", "draining"]
"""``starting``: not yet through its canary; ``serving``; ``draining``: takes no new request,
finishes what it runs, then leaves."""
ROUTABLE: frozenset[str] = frozenset({"serving"})
"""States in which a worker takes new requests."""


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
    state: WorkerState = "serving"
    """Announcements without it (older workers) are serving ones."""
    lease_ttl_s: float = 0.0
    """The worker's lease TTL (0: not announced)."""
    max_num_seqs: int = 0
    """Most requests its engine runs at once (0: not announced); the router's admission
    control derives the worker's slots from it and ``kv_blocks``."""
    kv_blocks: int = 0
    """KV cache blocks of its engine (0: not announced)."""
    stream_port: int = 0
    """Port of its framed token stream (``tandem.tokenstream``) on the host of ``address``;
    0: none (routers call it over gRPC only)."""

    @property
    def routable(self) -> bool:
        """Whether the worker takes new requests."""
        return self.state in ROUTABLE

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
    """Keeps one worker's lease (and its membership of the index set) alive until
    ``close``."""

    def __init__(
        self, client: aioredis.Redis, info: WorkerInfo, namespace: str, lease_ttl_s: float
    ) -> None:
        self.client = client
        self.info = dataclasses.replace(info, lease_ttl_s=lease_ttl_s)
        self.namespace = namespace
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.heartbeat = Periodic("lease renewal", lease_ttl_s / 3, self._renew)

    async def open(self) -> None:
        await self._renew()
        self.heartbeat.start()  # a Redis blip is retried; the lease covers two misses

    async def update(self, info: WorkerInfo) -> None:
        """Announces ``info`` at once (and at every renewal from now on)."""
        self.info = dataclasses.replace(info, lease_ttl_s=self.info.lease_ttl_s)
        await self._renew()

    async def set_state(self, state: WorkerState) -> None:
        """Announces ``state`` at once (and at every renewal from now on)."""
        self.info = dataclasses.replace(self.info, state=state)
        await self._renew()

    async def _renew(self) -> None:
        """Everything discovery needs, in one round trip: a Redis that restarted empty has
        the worker back at the next renewal."""
        info = dataclasses.replace(self.info, heartbeat_at=time.time())
        pipe = self.client.pipeline(transaction=False)
        pipe.set(worker_key(self.namespace, info.worker_id), info.to_json(),
                 px=self.lease_ttl_ms)
        pipe.sadd(index_key(self.namespace), info.worker_id)
        await pipe.execute()

    async def close(self) -> None:
        await self.heartbeat.close()
        with contextlib.suppress(Exception):
            await self.client.delete(worker_key(self.namespace, self.info.worker_id))
            await self.client.srem(index_key(self.namespace), self.info.worker_id)  # type: ignore[misc]


class WorkerWatcher:
    """The live workers, refreshed from Redis every ``interval_s``."""

    def __init__(self, client: aioredis.Redis, namespace: str, interval_s: float = 0.5,
                 default_lease_ttl_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.namespace = namespace
        self.interval_s = interval_s
        self.default_lease_ttl_s = default_lease_ttl_s
        """How long a known worker is kept after Redis restarted empty, when it did not
        announce its lease TTL."""
        self.clock = clock
        self.workers: dict[str, WorkerInfo] = {}
        self._quarantined: dict[str, float] = {}
        self._refresher = Periodic("discovery refresh", interval_s, self.refresh)
        self._run_id: str | None = None
        self._back_at: float | None = None
        """When Redis last answered again after a restart or a failed refresh (its known
        workers are kept for a lease from then)."""
        self._refresh_failed = False
        self.listeners: list[Callable[[dict[str, WorkerInfo]], None]] = []
        """Called with the live workers whenever the set changes."""

    async def refresh(self) -> dict[str, WorkerInfo]:
        try:
            return await self._refresh()
        except Exception:
            self._refresh_failed = True
            raise

    async def _refresh(self) -> dict[str, WorkerInfo]:
        pipe = self.client.pipeline(transaction=False)
        pipe.smembers(index_key(self.namespace))
        pipe.info("server")
        members, server = await pipe.execute()
        self._note_run_id(str(server.get("run_id", "")))
        if self._refresh_failed:
            self._refresh_failed = False
            self._back_at = self.clock()
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
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
            await self.client.srem(index_key(self.namespace), *lapsed)  # type: ignore[misc]
        self._keep_known(live)
        changed = live.keys() != self.workers.keys()
        self.workers = live
        if changed:
            log.info("workers changed", extra={"workers": sorted(live)})
            for listener in self.listeners:
                listener(live)
        return live

    def _note_run_id(self, run_id: str) -> None:
        if self._run_id is not None and run_id != self._run_id:
            self._back_at = self.clock()
            log.warning("redis restarted; keeping the known workers until they register again",
                        extra={"workers": sorted(self.workers)})
        self._run_id = run_id

    def _keep_known(self, live: dict[str, WorkerInfo]) -> None:
        """Once Redis answers again (restarted, or after failed refreshes), a known worker not
        registered again yet keeps its place for its lease TTL (the time it has to renew), so
        routing goes on meanwhile."""
        if self._back_at is None:
            return
        since = self.clock() - self._back_at
        kept = False
        for worker_id, info in self.workers.items():
            if worker_id not in live and since < (info.lease_ttl_s or self.default_lease_ttl_s):
                live[worker_id] = info
                kept = True
        if not kept:
            self._back_at = None

    def quarantine(self, worker_id: str) -> None:
        """Stops returning a worker whose calls failed, until it renews its lease again."""
        self._quarantined[worker_id] = time.time()
        self.workers.pop(worker_id, None)

    def of_role(self, role: str, model: str | None = None) -> list[WorkerInfo]:
        """The live workers of ``role`` (in any state: draining ones still finish streams)."""
        return [w for w in self.workers.values()
                if w.role == role and (model is None or w.model == model)]

    async def start(self) -> None:
        await self.refresh()
        self._refresher.start()

    async def close(self) -> None:
        await self._refresher.close()
