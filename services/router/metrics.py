"""The router's metrics: GenAI server conventions and the router's counters. Its stages of the
latency breakdown (tokenize, route) are recorded through ``tandem.stages.record_stage``."""

from __future__ import annotations

from opentelemetry.metrics import Histogram

from tandem.telemetry import meter, tally

# Bucket boundaries recommended by the OpenTelemetry GenAI semantic conventions.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
                 131072)
"""Prompt and output lengths, tokens (the planner sizes the pools from their distributions)."""
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)


SCOPE = "tandem.router"


HISTOGRAMS: tuple[tuple[str, str, str, str, tuple[float, ...]], ...] = (
    # attribute, instrument name, unit, description, bucket boundaries
    ("ttft", "gen_ai.server.time_to_first_token", "s",
     "Time to generate the first token of a request", TTFT_BUCKETS),
    ("tpot", "gen_ai.server.time_per_output_token", "s",
     "Time per output token after the first", TPOT_BUCKETS),
    ("duration", "gen_ai.server.request.duration", "s",
     "End-to-end duration of a request", DURATION_BUCKETS),
    ("prompt_tokens", "tandem.router.prompt_tokens", "{token}",
     "Prompt length of each finished request", TOKEN_BUCKETS),
    ("output_tokens", "tandem.router.output_tokens", "{token}",
     "Output length of each finished request", TOKEN_BUCKETS),
    ("queue_wait", "tandem.router.queue_wait", "s",
     "How long requests that found every slot taken waited for one", QUEUE_WAIT_BUCKETS),
)
"""The router's histograms, one row each (recorded once per request, never per token)."""


class RouterMetrics:
    """Instruments recorded once per request (never per token)."""

    ttft: Histogram
    tpot: Histogram
    duration: Histogram
    prompt_tokens: Histogram
    output_tokens: Histogram
    queue_wait: Histogram

    def __init__(self) -> None:
        m = meter(SCOPE)
        for attribute, name, unit, description, buckets in HISTOGRAMS:
            setattr(self, attribute, m.create_histogram(
                name, unit=unit, description=description,
                explicit_bucket_boundaries_advisory=buckets))
        # Counted per request on the hot path: tallies, read when metrics are collected.
        self.requests = tally(
            "tandem.router.requests", unit="{request}",
            description="Requests by outcome (attribute tandem.outcome)", scope=SCOPE)
        self.tokens = tally(
            "gen_ai.client.token.usage", unit="{token}",
            description="Tokens processed (attribute gen_ai.token.type: input or output)",
            scope=SCOPE)
        self.prompt_blocks = tally(
            "tandem.router.prompt_blocks", unit="{block}",
            description="Whole prompt blocks routed (the denominator of the cache hit rate)",
            scope=SCOPE)
        self.cached_blocks = tally(
            "tandem.router.cached_blocks", unit="{block}",
            description="Prompt blocks already on the chosen worker's device (hit rate numerator)",
            scope=SCOPE)
        self.prefill_decisions = tally(
            "tandem.router.prefill_decisions", unit="{request}",
            description="Where prompts were prefilled (tandem.prefill.location: remote or "
                        "local) and why (tandem.prefill.reason)", scope=SCOPE)
        self.migrations = tally(
            "tandem.router.migrations", unit="{migration}",
            description="Streams whose decode worker was lost after tokens were sent, by "
                        "tandem.outcome: resumed (another worker answered), lost (it was lost "
                        "too before answering), error, no_worker, limit (past "
                        "--max-migrations)", scope=SCOPE)
        self.refused = tally(
            "tandem.router.refused", unit="{request}",
            description="Requests refused by admission control, by tandem.reason: queue_full "
                        "and queue_timeout (429), no_worker (503), deadline (504, the deadline "
                        "passed while queued)", scope=SCOPE)
        self.queued = tally(
            "tandem.router.queued_requests", unit="{request}",
            description="Requests waiting at the router for a slot", up_down=True,
            scope=SCOPE)
        self.retries_denied = tally(
            "tandem.router.retries_denied", unit="{request}",
            description="Retries on another worker the retry budget refused (the request "
                        "failed instead)", scope=SCOPE)
        self.breaker_open = tally(
            "tandem.router.breaker_open", unit="{worker}",
            description="1 while a worker's circuit breaker keeps it out of routing (open, "
                        "or half-open with its trial request in flight), by tandem.worker_id",
            up_down=True, scope=SCOPE)
        self.breaker_transitions = tally(
            "tandem.router.breaker_transitions", unit="{transition}",
            description="Circuit breaker changes, by tandem.breaker.from and tandem.breaker.to "
                        "(closed, open, half_open)", scope=SCOPE)
        self.running = tally(
            "tandem.router.running_requests", unit="{request}",
            description="Requests in flight at the router", up_down=True, scope=SCOPE)
