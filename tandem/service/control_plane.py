"""The control plane's Redis client, made alike in every service."""

from __future__ import annotations

import redis.asyncio as aioredis

from tandem.service.groups import ControlPlaneSettings


def control_plane_redis(control: ControlPlaneSettings) -> aioredis.Redis:
    """A client of ``control.redis_url`` whose every call (and connect) fails past
    ``control.redis_timeout_s``: a Redis that hangs then reads as one that is gone (retried,
    resynced, or outlived by a lease), never as a service stalled on it."""
    return aioredis.Redis.from_url(control.redis_url, socket_timeout=control.redis_timeout_s,
                                   socket_connect_timeout=control.redis_timeout_s)
