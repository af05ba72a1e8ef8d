"""API keys in the control-plane Redis: one hash per key (``<namespace>:apikey:<id>``, the
fields of ``KeyRecord``: the tenant, the secret's hash, the limits) and the set of ids
(``<namespace>:apikeys``). The router reads records through ``KeyCache``; the admin CLI
(``services.router.keys``) writes them."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio as aioredis

from services.router.core.api_keys import KeyRecord, Limits, new_key, secret_hash


def record_key(namespace: str, key_id: str) -> str:
    return f"{namespace}:apikey:{key_id}"


def ids_key(namespace: str) -> str:
    return f"{namespace}:apikeys"


def _decoded(fields: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


class KeyCache:
    """Key records as this router last read them, each kept ``ttl_s`` (an absent key too, so a
    client hammering with a wrong key costs Redis one read per ``ttl_s``). A revocation reaches
    this router within ``ttl_s``."""

    def __init__(self, redis_client: aioredis.Redis, namespace: str, ttl_s: float) -> None:
        self.redis = redis_client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.clock = time.monotonic
        self._records: dict[str, tuple[float, KeyRecord | None]] = {}

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id`` (None: no such key). Raises Redis's errors when it has to
        read and cannot."""
        now = self.clock()
        cached = self._records.get(key_id)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        fields = await self.redis.hgetall(record_key(self.namespace, key_id))  # type: ignore[misc]
        record = KeyRecord.from_fields(key_id, _decoded(fields)) if fields else None
        if len(self._records) > 100_000:  # ids are cheap to invent: bound the cache
            self._records.clear()
        self._records[key_id] = (now, record)
        return record


# -- administration (synchronous: the CLI) -------------------------------------------------


def create(client: redis.Redis, namespace: str, tenant: str, limits: Limits) -> str:
    """Stores a new key for ``tenant``; returns the key's text (the only time it exists)."""
    if not tenant:
        raise ValueError("a key needs a tenant")
    text, parsed = new_key()
    record = KeyRecord(parsed.key_id, tenant, secret_hash(parsed.key_id, parsed.secret),
                       limits, time.time())
    with client.pipeline() as pipe:
        pipe.hset(record_key(namespace, parsed.key_id),
                  items=[part for pair in record.to_fields().items() for part in pair])
        pipe.sadd(ids_key(namespace), parsed.key_id)
        pipe.execute()
    return text


def list_keys(client: redis.Redis, namespace: str) -> list[KeyRecord]:
    ids = sorted(v.decode() for v in client.smembers(ids_key(namespace)))  # type: ignore[union-attr]
    with client.pipeline() as pipe:
        for key_id in ids:
            pipe.hgetall(record_key(namespace, key_id))
        replies = pipe.execute()
    return [KeyRecord.from_fields(key_id, _decoded(fields))
            for key_id, fields in zip(ids, replies, strict=True) if fields]


def revoke(client: redis.Redis, namespace: str, key_id: str) -> bool:
    """Deletes the key (``key_id``: its id, or the whole key); False when there was none."""
    key_id = key_id.split("-")[1] if key_id.startswith("tk-") else key_id
    with client.pipeline() as pipe:
        pipe.delete(record_key(namespace, key_id))
        pipe.srem(ids_key(namespace), key_id)
        deleted, _ = pipe.execute()
    return bool(deleted)
