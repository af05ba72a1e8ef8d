"""Per-key limits: what a request reserves, what the limits' state says to the client. Pure
logic; the state itself lives in Redis (``services.router.rate_limiter`` and its Lua script),
shared by every router of the namespace.

- **Requests and tokens per minute** are token buckets: a bucket holds up to the limit and
  refills at the limit per minute, continuously (so a key that was idle can burst one minute's
  worth at once, then goes at the limit's pace). A request takes one request and reserves its
  tokens: the prompt plus what it may generate (``max_tokens`` per choice, or the rest of the
  context when it sets none), capped at the bucket's size so that any request can run when
  the bucket is full. When it ends, the difference between the reservation and what it used
  (prompt + generated tokens) goes back to the bucket: a refund, or a charge when it used
  more than the cap let it reserve (the bucket may go below zero: the key's next requests
  wait until it has refilled). Reserving the worst case at admission means a key can never
  run more than its limit at once, whatever its requests turn out to generate.
- **Concurrent streams** are leases: a sorted set of the key's running requests, each with an
  expiry that its router renews while it runs. A router that dies stops renewing, so its
  leases lapse and their slots come back (``--api-keys-stream-lease-s``).
- **The answer** to the client carries OpenAI's ``x-ratelimit-*`` headers (the limit, what is
  left, the time until the bucket is full again) and, on a refusal, ``Retry-After``: the time
  until the bucket holds what the request needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from services.router.core.api_keys import Limits

MINUTE_MS = 60_000

Verdict = Literal["ok", "requests", "tokens", "streams"]


def reservation(limits: Limits, prompt_tokens: int, max_tokens: int | None, choices: int,
                max_model_len: int) -> int:
    """Tokens a request reserves at admission: its prompt plus the most its ``choices`` may
    generate, capped at the key's tokens per minute (0: nothing to reserve)."""
    if not limits.tokens_per_minute:
        return 0
    per_choice = max_tokens if max_tokens is not None else max(0, max_model_len - prompt_tokens)
    return min(limits.tokens_per_minute, prompt_tokens + choices * per_choice)


@dataclasses.dataclass(frozen=True)
class LimitState:
    """The key's buckets just after the decision (what the script returns)."""

    verdict: Verdict
    requests_left: float
    """Requests in the bucket (-1: no request limit)."""
    tokens_left: float
    """Tokens in the bucket (-1: no token limit); below zero after an overrun."""
    streams_used: int

    @classmethod
    def from_reply(cls, reply: list[bytes | str | int]) -> LimitState:
        def text(value: bytes | str | int) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        verdict = text(reply[0])
        assert verdict in ("ok", "requests", "tokens", "streams"), verdict
        return cls(verdict, float(text(reply[1])), float(text(reply[2])),  # type: ignore[arg-type]
                   int(text(reply[3])))


def refill_ms(missing: float, per_minute: int) -> int:
    """Time for a bucket refilling ``per_minute`` to gain ``missing``, in whole ms (rounded
    up)."""
    if missing <= 0:
        return 0
    return math.ceil(missing * MINUTE_MS / per_minute)


def retry_after_ms(state: LimitState, limits: Limits, reserved: int,
                   stream_retry_after_ms: int) -> int:
    """When a refused request may come back: its bucket refilled by what it lacked (a stream
    slot: ``stream_retry_after_ms``, since no one knows when a stream ends)."""
    if state.verdict == "requests":
        return max(1, refill_ms(1 - state.requests_left, limits.requests_per_minute))
    if state.verdict == "tokens":
        return max(1, refill_ms(reserved - state.tokens_left, limits.tokens_per_minute))
    return stream_retry_after_ms


def duration(ms: int) -> str:
    """OpenAI's spelling of a reset time (Go's duration format): "250ms", "1s", "6m0s",
    "1h2m3.5s"."""
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def headers(state: LimitState, limits: Limits) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` headers for the key's limits (none for an unlimited one)."""
    out: list[tuple[bytes, bytes]] = []
    for name, limit, left in (("requests", limits.requests_per_minute, state.requests_left),
                              ("tokens", limits.tokens_per_minute, state.tokens_left)):
        if not limit:
            continue
        out += [(f"x-ratelimit-limit-{name}".encode(), str(limit).encode()),
                (f"x-ratelimit-remaining-{name}".encode(),
                 str(max(0, math.floor(left))).encode()),
                (f"x-ratelimit-reset-{name}".encode(),
                 duration(refill_ms(limit - left, limit)).encode())]
    return out


def refusal_message(state: LimitState, limits: Limits, reserved: int) -> str:
    if state.verdict == "requests":
        return (f"Rate limit reached for requests: limit {limits.requests_per_minute} per "
                "minute. Please try again later.")
    if state.verdict == "tokens":
        return (f"Rate limit reached for tokens: limit {limits.tokens_per_minute} per minute, "
                f"available {max(0, math.floor(state.tokens_left))}, requested {reserved} "
                "(the prompt and max_tokens). Please try again later.")
    return (f"Rate limit reached for concurrent streams: limit {limits.concurrent_streams}. "
            "Please try again when one of the key's requests has finished.")
