"""Follows the namespace's routing overrides in Redis (see ``routing_overrides``) and applies
them to the route chooser."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from services.router.core.routing_overrides import apply_overrides, changed_fields, routing_key
from services.router.core.routing_settings import RoutingSettings
from services.router.routing import RouteChooser
from tandem.service.lifecycle import Periodic

log = logging.getLogger(__name__)


class RoutingWatch:
    """Reads ``<namespace>:routing`` every ``interval_s``; routes with ``base`` (the flags)
    plus the overrides found there. While Redis is away the last overrides hold, and reads are
    retried with jittered backoff."""

    def __init__(self, client: aioredis.Redis, namespace: str, routing: RouteChooser,
                 base: RoutingSettings, interval_s: float) -> None:
        self.client = client
        self.key = routing_key(namespace)
        self.routing = routing
        self.base = base
        self._seen: dict[str, str] = {}
        self._periodic = Periodic("routing-overrides", interval_s, self.refresh)

    async def refresh(self) -> None:
        reply = await self.client.hgetall(self.key)  # type: ignore[misc]
        raw = {_text(key): _text(value) for key, value in reply.items()}
        if raw == self._seen:
            return
        self._seen = raw
        try:
            settings = apply_overrides(self.base, raw)
        except ValueError as error:
            log.error("routing overrides refused; routing settings unchanged",
                      extra={"key": self.key, "reason": str(error)})
            return
        changed = changed_fields(self.routing.settings, settings)
        if changed:
            self.routing.set_settings(settings)
            log.info("routing settings changed", extra={"key": self.key, "changed": changed})

    async def start(self) -> None:
        await self.refresh()  # the overrides hold from the first request on
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
