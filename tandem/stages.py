"""The latency breakdown of a request: every stage has its own duration histogram, recorded
through one helper, so a dashboard can stack the stages and the sum explains the end-to-end
time.

Where each stage is recorded (the process that records it exports it on its /metrics):

| stage | recorded by | from → to |
|---|---|---|
| ``tokenize`` | router | chat template + tokenization of the prompt |
| ``route`` | router | the whole routing decision (the three below) |
| ``route_hash`` | router | hashing the prompt's blocks |
| ``route_index_lookup`` | router | prefix lookup in the KV index |
| ``route_score`` | router | scoring the candidate workers |
| ``queue`` | engine worker | request submitted to the engine → first scheduled |
| ``prefill`` | engine worker | first scheduled → first token (prompt compute) |
| ``remote_prefill`` | router | Prefill call to a prefill worker (its queue, prefill and KV put) |
| ``kv_put`` | prefill worker | writing the prompt's KV blocks to the KV store (all chunks) |
| ``kv_get`` | decode worker | fetching a prompt's KV blocks from the KV store |
| ``first_decode_step`` | engine worker | first token → second token of the request |
| ``inter_token`` | router | mean time between output tokens after the first |

``inter_token`` is the GenAI convention's ``gen_ai.server.time_per_output_token`` (recorded by
the router); it is not duplicated under a tandem name. ``kv_put`` and ``kv_get`` are one sample
per request and direction, through ``tandem.kv_transfers``: the mock engine records them as it
transfers; vLLM's transfers run in its engine core, whose connector reports them to the worker
process (``tandem.kvconnector.stats``), which records them when the request ends.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from opentelemetry.metrics import Histogram

from tandem.telemetry import meter

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; from 100 µs (a route lookup) to 10 s (a long prefill under load)."""

INTER_TOKEN_METRIC = "gen_ai.server.time_per_output_token"
"""The instrument that carries the ``inter_token`` stage (a GenAI convention metric)."""


class Stage(enum.StrEnum):
    """The stages of a request, in the order a request passes them."""

    TOKENIZE = "tokenize"
    ROUTE = "route"
    ROUTE_HASH = "route_hash"
    ROUTE_INDEX_LOOKUP = "route_index_lookup"
    ROUTE_SCORE = "route_score"
    QUEUE = "queue"
    PREFILL = "prefill"
    REMOTE_PREFILL = "remote_prefill"
    KV_PUT = "kv_put"
    KV_GET = "kv_get"
    FIRST_DECODE_STEP = "first_decode_step"
    INTER_TOKEN = "inter_token"


_DESCRIPTIONS = {
    Stage.TOKENIZE: "Chat template and tokenization of the prompt (router)",
    Stage.ROUTE: "Routing decision: block hashing, index lookup and scoring (router)",
    Stage.ROUTE_HASH: "Hashing the prompt's blocks for routing (router)",
    Stage.ROUTE_INDEX_LOOKUP: "Prefix lookup of the prompt's blocks in the KV index (router)",
    Stage.ROUTE_SCORE: "Scoring the candidate workers (router)",
    Stage.QUEUE: "Time in the engine's queue before the request is first scheduled",
    Stage.PREFILL: "Prompt computation: first scheduled to first token (engine)",
    Stage.REMOTE_PREFILL: "Prefill on a prefill worker, as the router waits for it: queue, "
                          "prompt compute and KV put (router)",
    Stage.KV_PUT: "Writing a request's KV blocks to the KV store",
    Stage.KV_GET: "Fetching a request's KV blocks from the KV store",
    Stage.FIRST_DECODE_STEP: "First token to second token of a request (engine)",
}


def metric_name(stage: Stage) -> str:
    """The OpenTelemetry instrument name of a stage's histogram."""
    if stage is Stage.INTER_TOKEN:
        return INTER_TOKEN_METRIC
    return f"tandem.stage.{stage.value}.duration"


def prometheus_name(stage: Stage) -> str:
    """The histogram's name in Prometheus (without the _bucket/_sum/_count suffix)."""
    return metric_name(stage).replace(".", "_") + "_seconds"


_histograms: dict[Stage, Histogram] = {}


def record_stage(stage: Stage, seconds: float,
                 attributes: Mapping[str, str | int] | None = None) -> None:
    """Records one duration (seconds) of ``stage`` in the stage's own histogram. Instruments are
    made on first use, so a process exports only the stages it records."""
    if stage is Stage.INTER_TOKEN:
        raise ValueError(f"inter_token is recorded as {INTER_TOKEN_METRIC} by the router")
    histogram = _histograms.get(stage)
    if histogram is None:
        histogram = meter("tandem.stages").create_histogram(
            metric_name(stage), unit="s", description=_DESCRIPTIONS[stage],
            explicit_bucket_boundaries_advisory=STAGE_BUCKETS)
        _histograms[stage] = histogram
    histogram.record(max(0.0, seconds), attributes)
