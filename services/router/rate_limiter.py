"""Per-key limits in Redis, shared by every router of the namespace: one Lua script decides
and takes atomically (requests, tokens, a stream lease), one gives back what a request did not
use, one renews the leases of the streams still running. The arithmetic and its rationale are
``core.rate_limits``'; this module is the Redis side, its clock (Redis's ``TIME``, so routers
with skewed clocks agree) and what happens while Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from services.router.core.api_keys import ApiKeySettings, KeyRecord
from services.router.core.rate_limits import LimitState
from tandem.service.lifecycle import Periodic
from tandem.telemetry import tally

log = logging.getLogger("services.router.rate_limiter")

# KEYS: requests bucket, tokens bucket, stream leases.
# ARGV: rpm, tpm, streams, tokens to reserve, lease id, lease ms.
# A bucket is a hash {l: level, t: ms of the level}; absent = full. Returns the verdict, the
# levels after it (-1: no such limit) and the leases held.
_ADMIT = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local function level(key, cap)
  if cap <= 0 then return -1 end
  local v = redis.call('HMGET', key, 'l', 't')
  local l, t = tonumber(v[1]), tonumber(v[2])
  if l == nil then return cap end
  return math.min(cap, l + (now - t) * cap / 60000)
end
local function store(key, cap, l)
  redis.call('HSET', key, 'l', tostring(l), 't', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((cap - l) * 60000 / cap) + 1000)
end
local rpm, tpm, slots = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local need, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[6])
local rl, tl, used = level(KEYS[1], rpm), level(KEYS[2], tpm), 0
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  used = redis.call('ZCARD', KEYS[3])
end
local verdict = 'ok'
if rpm > 0 and rl < 1 then verdict = 'requests'
elseif tpm > 0 and tl < need then verdict = 'tokens'
elseif slots > 0 and used >= slots then verdict = 'streams' end
if verdict == 'ok' then
  if rpm > 0 then rl = rl - 1; store(KEYS[1], rpm, rl) end
  if tpm > 0 then tl = tl - need; store(KEYS[2], tpm, tl) end
  if slots > 0 then
    redis.call('ZADD', KEYS[3], now + lease_ms, ARGV[5])
    redis.call('PEXPIRE', KEYS[3], lease_ms)
    used = used + 1
  end
end
return {verdict, tostring(rl), tostring(tl), used}
"""

# KEYS: tokens bucket, stream leases. ARGV: tpm, tokens back (negative: a charge), lease id.
_SETTLE = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local tpm, back = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and back ~= 0 then
  local v = redis.call('HMGET', KEYS[1], 'l', 't')
  local l, t = tonumber(v[1]), tonumber(v[2])
  if l == nil then l = tpm else l = math.min(tpm, l + (now - t) * tpm / 60000) end
  l = math.min(tpm, l + back)
  redis.call('HSET', KEYS[1], 'l', tostring(l), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((tpm - l) * 60000 / tpm) + 1000)
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
"""

# KEYS: stream leases of each key, ARGV: lease ms, then one lease id per key.
_RENEW = """
local now_parts = redis.call('TIME')
local now = now_parts[1] * 1000 + math.floor(now_parts[2] / 1000)
local lease_ms = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease_ms)
end
return #KEYS
"""


def limit_keys(namespace: str, key_id: str) -> tuple[str, str, str]:
    """The key's requests bucket, tokens bucket and stream leases (one hash slot)."""
    base = f"{namespace}:ratelimit:{{{key_id}}}"
    return f"{base}:requests", f"{base}:tokens", f"{base}:streams"


class RedisOutage:
    """Whether Redis is reachable, as this router last found it: a log line and a metric
    when an outage starts, a log line when it ends."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.down = False
        self.failures = tally("tandem.router.api_keys.redis_failures", unit="{call}",
                              description="Key lookups and limit checks that found Redis "
                                          "unreachable (attribute tandem.policy: how the "
                                          "limits failed, closed or open)",
                              scope="tandem.router")

    def failed(self, error: BaseException) -> None:
        self.failures.add(1, {"tandem.policy": self.policy})
        if not self.down:
            self.down = True
            log.warning("Redis unreachable: per-key limits fail %s until it is back (%s)",
                        self.policy, type(error).__name__,
                        extra={"policy": self.policy})

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            log.warning("Redis reachable again: per-key limits apply",
                        extra={"policy": self.policy})


REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RateLimiter:
    """The router's side of the shared limits, and the leases it holds."""

    def __init__(self, redis_client: aioredis.Redis, namespace: str,
                 settings: ApiKeySettings, outage: RedisOutage) -> None:
        self.namespace = namespace
        self.settings = settings
        self.outage = outage
        self._admit = redis_client.register_script(_ADMIT)
        self._settle = redis_client.register_script(_SETTLE)
        self._renew = redis_client.register_script(_RENEW)
        self.leases: dict[str, str] = {}
        """Lease id -> the leases' set of its key, for the streams running here."""
        self._renewal = Periodic("stream-lease renewal", self.settings.stream_lease_s / 3,
                                 self._renew_leases)
        self._settling: set[asyncio.Task[None]] = set()

    async def admit(self, record: KeyRecord, reserve: int) -> tuple[LimitState, str]:
        """The decision for one request of ``record``'s key reserving ``reserve`` tokens, and
        its lease id ("" without a stream limit). Raises ``REDIS_ERRORS``."""
        limits = record.limits
        lease = uuid.uuid4().hex if limits.concurrent_streams else ""
        keys = limit_keys(self.namespace, record.key_id)
        args: list[int | str] = [
            limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_streams,
            reserve, lease, int(self.settings.stream_lease_s * 1000)]
        async with asyncio.timeout(self.settings.redis_timeout_s):
            try:
                reply = await self._admit(keys=list(keys), args=args)
            except RedisConnectionError:  # a pooled connection from before a Redis restart: once
                reply = await self._admit(keys=list(keys), args=args)
        state = LimitState.from_reply(reply)
        if lease and state.verdict == "ok":
            self.leases[lease] = keys[2]
        return state, lease if state.verdict == "ok" else ""

    def settle(self, record: KeyRecord, lease: str, back: int) -> None:
        """Gives back ``back`` tokens (a charge when negative) and the lease, in the
        background (a request that ends never waits for it)."""
        self.leases.pop(lease, None)
        if not lease and not (back and record.limits.tokens_per_minute):
            return
        task = asyncio.get_running_loop().create_task(self._settle_now(record, lease, back))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_now(self, record: KeyRecord, lease: str, back: int) -> None:
        _, tokens, streams = limit_keys(self.namespace, record.key_id)
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self._settle(keys=[tokens, streams],
                                   args=[record.limits.tokens_per_minute, back, lease])
        except REDIS_ERRORS as error:  # the lease lapses by itself
            self.outage.failed(error)

    def start(self) -> None:
        self._renewal.start()

    async def _renew_leases(self) -> None:
        if not self.leases:
            return
        leases = list(self.leases.items())
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self._renew(keys=[k for _, k in leases],
                                  args=[int(self.settings.stream_lease_s * 1000),
                                        *(lease for lease, _ in leases)])
        except REDIS_ERRORS as error:
            self.outage.failed(error)

    async def close(self) -> None:
        await self._renewal.close()  # ends on a flag: a cancelled Redis call may not re-raise
        await asyncio.gather(*self._settling, return_exceptions=True)
