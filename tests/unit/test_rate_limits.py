"""Per-key limits: reservations, refill times, Retry-After, OpenAI's headers (pure)."""

from __future__ import annotations

import pytest

from services.router.core.api_keys import Limits
from services.router.core.rate_limits import (
    LimitState,
    duration,
    headers,
    refill_ms,
    reservation,
    retry_after_ms,
)

LIMITS = Limits(requests_per_minute=60, tokens_per_minute=6000, concurrent_streams=2)


@pytest.mark.parametrize(("limits", "prompt", "max_tokens", "choices", "reserved"), [
    (LIMITS, 100, 50, 1, 150),
    (LIMITS, 100, 50, 3, 250),  # the prompt once, every choice's tokens
    (LIMITS, 100, None, 1, 1124),  # unset: the rest of the context (1,124 tokens)
    (LIMITS, 100, 10_000, 1, 6000),  # capped at the bucket: it can always run when full
    (LIMITS, 2000, None, 1, 2000),  # past the context: the prompt (refused later)
    (Limits(requests_per_minute=5), 100, 50, 1, 0),  # no token limit: nothing to reserve
])
def test_reservation(limits: Limits, prompt: int, max_tokens: int | None, choices: int,
                     reserved: int) -> None:
    assert reservation(limits, prompt, max_tokens, choices, max_model_len=1124) == reserved


@pytest.mark.parametrize(("missing", "per_minute", "ms"), [
    (0, 60, 0), (-3, 60, 0), (1, 60, 1000), (0.5, 60, 500), (1, 7, 8572), (100, 6000, 1000),
])
def test_refill_ms(missing: float, per_minute: int, ms: int) -> None:
    assert refill_ms(missing, per_minute) == ms


@pytest.mark.parametrize(("state", "reserved", "ms"), [
    (LimitState("requests", 0.25, 6000, 0), 0, 750),  # 0.75 of a request at 1/s
    (LimitState("requests", 0.9999999, 6000, 0), 0, 1),  # never 0
    (LimitState("tokens", 60, 50, 0), 250, 2000),  # 200 tokens at 100/s
    (LimitState("tokens", 60, -300, 0), 200, 5000),  # an overrun's debt waits too
    (LimitState("streams", 60, 6000, 2), 10, 1234),
])
def test_retry_after(state: LimitState, reserved: int, ms: int) -> None:
    assert retry_after_ms(state, LIMITS, reserved, stream_retry_after_ms=1234) == ms


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0ms"), (250, "250ms"), (1000, "1s"), (1500, "1.5s"), (59_999, "59.999s"),
    (60_000, "1m0s"), (360_000, "6m0s"), (3_723_500, "1h2m3.5s"),
])
def test_duration_is_openais_spelling(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_headers_say_limit_remaining_and_reset() -> None:
    state = LimitState("ok", 59.5, 5900.2, 1)
    assert dict(headers(state, LIMITS)) == {
        b"x-ratelimit-limit-requests": b"60", b"x-ratelimit-remaining-requests": b"59",
        b"x-ratelimit-reset-requests": b"500ms",
        b"x-ratelimit-limit-tokens": b"6000", b"x-ratelimit-remaining-tokens": b"5900",
        b"x-ratelimit-reset-tokens": b"999ms"}  # rounded up


def test_headers_never_go_negative_and_skip_absent_limits() -> None:
    state = LimitState("tokens", -1, -250, 0)
    assert dict(headers(state, Limits(tokens_per_minute=600))) == {
        b"x-ratelimit-limit-tokens": b"600", b"x-ratelimit-remaining-tokens": b"0",
        b"x-ratelimit-reset-tokens": b"1m25s"}


def test_the_scripts_reply_is_read() -> None:
    assert LimitState.from_reply([b"tokens", b"3.5", b"-1", 2]) == LimitState(
        "tokens", 3.5, -1.0, 2)
