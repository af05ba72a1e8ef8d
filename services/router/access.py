"""The router's front door when API keys are on (``--api-keys-enabled``): who the caller is
(its key, hence its tenant) and whether its key's limits let the request in.

The transports call it at three points: ``Access.authenticate`` when a call arrives (the HTTP
middleware ``api.http_keys``, the gRPC handlers' wrapper), ``key_tenant`` where the request's
tenant is set, and ``limited`` around the request's token stream (its first step takes the
limits, its end settles them). The request's identity travels in a context variable from the
first point to the others, so the transports only gain a call at each. With keys off the
context variable is empty and both calls hand back what they were given.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import AsyncGenerator

import grpc
import redis.asyncio as aioredis
from opentelemetry import trace

from services.router.core import rate_limits
from services.router.core.api_keys import (
    ApiKeySettings,
    AuthFailure,
    KeyRecord,
    presented_key,
    refusal_message,
    verify,
)
from services.router.core.request import Delta
from services.router.keystore import KeyCache
from services.router.rate_limiter import REDIS_ERRORS, RateLimiter, RedisOutage
from tandem.errors import TandemError, invalid
from tandem.telemetry import tally
from tandem.v1 import common_pb2

RETRY_AFTER_MS = 1000
"""Retry-After of a refusal for want of a stream slot (when a stream ends is unknown), and
of a 503 while Redis cannot be read (when it is back is unknown too)."""


class AuthRefused(TandemError):
    """No valid key: HTTP 401 (OpenAI's ``invalid_api_key``), gRPC UNAUTHENTICATED."""

    def __init__(self, failure: AuthFailure) -> None:
        super().__init__(common_pb2.ERROR_CODE_INVALID_REQUEST, refusal_message(failure))
        self.failure = failure

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED


@dataclasses.dataclass
class Caller:
    """One request's key, and what its limits said (for the response's headers)."""

    access: Access
    record: KeyRecord
    headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)


current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "tandem_router_caller", default=None)


class Access:
    """Keys (read through a short-lived cache) and their limits, for one router."""

    def __init__(self, settings: ApiKeySettings, redis_client: aioredis.Redis, namespace: str,
                 max_model_len: int) -> None:
        self.settings = settings
        self.max_model_len = max_model_len
        self.keys = KeyCache(redis_client, namespace, settings.cache_ttl_s)
        self.outage = RedisOutage(settings.redis_failure)
        self.limiter = RateLimiter(redis_client, namespace, settings, self.outage)
        self.refused = tally("tandem.router.api_keys.refused", unit="{request}",
                             description="Requests refused at the front door (attribute "
                                         "tandem.reason: missing, malformed, unknown, "
                                         "wrong_secret, requests, tokens, streams, "
                                         "redis_unavailable)", scope="tandem.router")

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request with this ``Authorization`` value. Raises ``AuthRefused``,
        or UNAVAILABLE when the key's record cannot be read."""
        key = presented_key(authorization)
        if isinstance(key, str):
            self.refused.add(1, {"tandem.reason": key})
            raise AuthRefused(key)
        try:
            record = await self.keys.get(key.key_id)
        except REDIS_ERRORS as error:
            self.outage.failed(error)
            self.refused.add(1, {"tandem.reason": "redis_unavailable"})
            raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                              "API keys cannot be checked right now: try again later",
                              retry_after_ms=RETRY_AFTER_MS) from None
        verdict = verify(key, record)
        if isinstance(verdict, str):
            self.refused.add(1, {"tandem.reason": verdict})
            raise AuthRefused(verdict)
        return Caller(self, verdict)

    async def admit(self, caller: Caller, reserve: int) -> str:
        """Takes the caller's limits for one request (its lease id, "" for none); raises the
        refusal (429 with Retry-After, or 503 while Redis is out and the limits fail
        closed)."""
        record = caller.record
        limits = record.limits
        if not (limits.requests_per_minute or limits.tokens_per_minute
                or limits.concurrent_streams):
            return ""
        try:
            state, lease = await self.limiter.admit(record, reserve)
        except REDIS_ERRORS as error:
            self.outage.failed(error)
            if self.settings.redis_failure == "open":
                return ""
            self.refused.add(1, {"tandem.reason": "redis_unavailable"})
            raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                              "rate limits cannot be checked right now: try again later",
                              retry_after_ms=RETRY_AFTER_MS) from None
        self.outage.succeeded()
        caller.headers = rate_limits.headers(state, limits)
        if state.verdict != "ok":
            self.refused.add(1, {"tandem.reason": state.verdict})
            raise TandemError(common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED,
                              rate_limits.refusal_message(state, limits, reserve),
                              retry_after_ms=rate_limits.retry_after_ms(
                                  state, limits, reserve, RETRY_AFTER_MS))
        return lease


def key_tenant(body_tenant: str, *, label_only: bool) -> str:
    """The request's tenant: its key's when keys are on, else ``body_tenant`` (the local
    default). With a key, a body tenant that is only a label (HTTP's ``user``) is ignored for
    the tenant; one that claims to be the tenant (RouterService's ``tenant``) must be empty or
    the key's own (400 otherwise: it is never accepted and ignored)."""
    caller = current.get()
    if caller is None:
        return body_tenant
    tenant = caller.record.tenant
    if not label_only and body_tenant and body_tenant != tenant:
        raise invalid("tenant: the API key sets the tenant; leave the field empty", "tenant")
    span = trace.get_current_span()
    if span.is_recording():  # the key's public id, never its secret; the body's label
        span.set_attributes({"tandem.tenant": tenant, "tandem.api_key_id": caller.record.key_id,
                             "tandem.user": body_tenant if label_only else ""})
    return tenant


def limited(deltas: AsyncGenerator[tuple[int, Delta], None], prompt_tokens: int,
            max_tokens: int | None, choices: int) -> AsyncGenerator[tuple[int, Delta], None]:
    """``deltas`` under the caller's limits: its first step admits the request (or raises the
    refusal, before any token), its end gives back what the request did not use."""
    caller = current.get()
    if caller is None:
        return deltas
    return _limited(caller, deltas, prompt_tokens, max_tokens, choices)


async def _limited(caller: Caller, deltas: AsyncGenerator[tuple[int, Delta], None],
                   prompt_tokens: int, max_tokens: int | None, choices: int,
                   ) -> AsyncGenerator[tuple[int, Delta], None]:
    access = caller.access
    reserved = rate_limits.reservation(caller.record.limits, prompt_tokens, max_tokens,
                                       choices, access.max_model_len)
    lease = await access.admit(caller, reserved)
    used = prompt_tokens
    try:
        async with contextlib.aclosing(deltas):  # closing this closes the generation at once
            async for index, delta in deltas:
                used += len(delta.token_ids)
                yield index, delta
    finally:
        back = reserved - used if reserved else 0
        access.limiter.settle(caller.record, lease, back)
