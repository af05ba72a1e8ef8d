"""Engine steps in a request's trace: phase spans, step events (capped), engine-side stages;
and vLLM's side: steps from stat-logger calls, attribution of steps to a request's outputs."""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace
from typing import Any

import prometheus_client
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.engines.base import EngineRequest, Sampling
from tandem.engines.step_trace import (
    DECODE_SPAN,
    PREFILL_SPAN,
    STEP_EVENT,
    EngineStep,
    StepTraceSettings,
    start_request_trace,
)
from tandem.engines.vllm_tracing import (
    JournalSettings,
    StepJournal,
    VllmRequestSteps,
    engine_timing,
    quiet_iteration_log,
    step_from_stats,
)
from tandem.stages import Stage, prometheus_name
from tandem.telemetry import trace_headers


def traced_request(parent: trace.Span) -> EngineRequest:
    return EngineRequest("r1", [1, 2, 3, 4, 5], Sampling(max_tokens=4),
                         trace_headers=trace_headers(trace.set_span_in_context(parent)))


START_NS = time.time_ns() + 1_000_000_000  # steps run after the test's requests are submitted


def step(index: int, batch: int = 2, duration_s: float = 0.01) -> EngineStep:
    return EngineStep(index=index, batch_size=batch, waiting=1, prompt_tokens=5,
                      decode_tokens=batch - 1, output_tokens=batch,
                      time_ns=START_NS + 20_000_000 * index, duration_s=duration_s)


def sample_total(name: str) -> float:
    """Sum of a sample over every label set in the process's Prometheus registry."""
    return sum(sample.value for family in prometheus_client.REGISTRY.collect()
               for sample in family.samples if sample.name == name)


def stage_count(stage: Stage) -> float:
    return sample_total(f"{prometheus_name(stage)}_count")


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def step_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == STEP_EVENT]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    new_tokens: list[int]
    """New tokens of the request in each step it ran in (0: a prefill chunk)."""
    max_events: int
    prefill_events: int
    decode_events: int | None
    """None: no decode span."""
    dropped: int = 0


CASES = [
    Case("one token", [1], 32, 1, None),
    Case("chunked prefill then decode", [0, 0, 1, 1, 1, 1], 32, 3, 3),
    Case("events capped, steps counted", [1, 1, 1, 1, 1, 1], 2, 1, 2, dropped=3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_phase_spans_and_step_events(exporter: InMemorySpanExporter, case: Case) -> None:
    with trace.get_tracer("test").start_as_current_span("server") as server:
        request_trace = start_request_trace(traced_request(server), "m", "engine-x",
                                            StepTraceSettings(max_step_events=case.max_events))
        assert request_trace is not None
        for index, tokens in enumerate(case.new_tokens, start=1):
            request_trace.step(step(index), tokens, scheduled_tokens=tokens or 3)
        request_trace.finish("length")
    spans = spans_by_name(exporter)
    prefill = spans[PREFILL_SPAN]
    assert prefill.parent is not None and prefill.parent.span_id == server.get_span_context(
    ).span_id
    assert len(step_events(prefill)) == case.prefill_events
    first_token_step = case.new_tokens.index(1) + 1
    assert prefill.end_time == step(first_token_step).time_ns
    if case.decode_events is None:
        assert DECODE_SPAN not in spans
        assert prefill.attributes is not None
        assert prefill.attributes["gen_ai.response.finish_reasons"] == ("length",)
        return
    decode = spans[DECODE_SPAN]
    assert decode.start_time == prefill.end_time
    events = step_events(decode)
    assert len(events) == case.decode_events
    assert events[0] == {"tandem.engine.step": first_token_step + 1,
                         "tandem.engine.batch_size": 2, "tandem.engine.waiting": 1,
                         "tandem.engine.step.prompt_tokens": 5,
                         "tandem.engine.step.decode_tokens": 1,
                         "tandem.engine.step.duration": 0.01,
                         "tandem.engine.request.new_tokens": 1,
                         "tandem.engine.request.scheduled_tokens": 1}
    attributes = decode.attributes
    assert attributes is not None
    assert attributes["tandem.engine.steps"] == case.decode_events + case.dropped
    assert attributes["tandem.engine.step_events_dropped"] == case.dropped
    assert attributes["gen_ai.usage.output_tokens"] == sum(case.new_tokens)
    assert attributes["tandem.engine.batch_size.max"] == 2


def test_abandoned_request_ends_its_open_span(exporter: InMemorySpanExporter) -> None:
    with trace.get_tracer("test").start_as_current_span("server") as server:
        request_trace = start_request_trace(traced_request(server), "m", "e",
                                            StepTraceSettings())
        assert request_trace is not None
        request_trace.step(step(1), 0, 3)
        request_trace.finish(None)
        request_trace.finish("stop")  # a second finish changes nothing
    prefill = spans_by_name(exporter)[PREFILL_SPAN]
    assert prefill.attributes is not None
    assert prefill.attributes["gen_ai.response.finish_reasons"] == ("abort",)


def test_requests_without_trace_context_are_not_traced() -> None:
    request = EngineRequest("canary", [1, 2], Sampling(max_tokens=1))
    assert start_request_trace(request, "m", "e", StepTraceSettings()) is None


def test_engine_stages_from_steps(exporter: InMemorySpanExporter) -> None:
    before = {stage: stage_count(stage)
              for stage in (Stage.QUEUE, Stage.PREFILL, Stage.FIRST_DECODE_STEP)}
    with trace.get_tracer("test").start_as_current_span("server") as server:
        request_trace = start_request_trace(traced_request(server), "m", "e",
                                            StepTraceSettings())
        assert request_trace is not None
        for index in range(1, 4):
            request_trace.step(step(index), 1, 1)
        request_trace.finish("stop")
    for stage, count in before.items():
        assert stage_count(stage) == count + 1, stage


def test_engine_timing_replaces_the_step_estimate(exporter: InMemorySpanExporter) -> None:
    queue_before = stage_count(Stage.QUEUE)
    sum_name = f"{prometheus_name(Stage.QUEUE)}_sum"
    sum_before = sample_total(sum_name)
    with trace.get_tracer("test").start_as_current_span("server") as server:
        request_trace = start_request_trace(traced_request(server), "m", "e",
                                            StepTraceSettings())
        assert request_trace is not None
        request_trace.engine_timing(queue_s=0.25, prefill_s=0.5)
        request_trace.step(step(1), 1)
        request_trace.finish("stop")
    assert stage_count(Stage.QUEUE) == queue_before + 1
    summed = sample_total(sum_name)
    assert summed - sum_before == pytest.approx(0.25)
    prefill = spans_by_name(exporter)[PREFILL_SPAN]
    assert prefill.attributes is not None
    assert prefill.attributes["tandem.engine.queue_duration"] == 0.25


# --- vLLM -------------------------------------------------------------------------------------

def scheduler_stats(details: Any = None, running: int = 3, waiting: int = 2) -> Any:
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting,
                           iteration_details=details)


def details(ctx_requests: int, ctx_tokens: int, gen_requests: int, dummy: bool = False) -> Any:
    return SimpleNamespace(num_ctx_requests=ctx_requests, num_ctx_tokens=ctx_tokens,
                           num_generation_requests=gen_requests,
                           num_generation_tokens=gen_requests, elapsed_ms=12.5,
                           is_dummy=dummy)


def iteration(generation: int, prompt: int = 0) -> Any:
    return SimpleNamespace(num_generation_tokens=generation, num_prompt_tokens=prompt)


@pytest.mark.parametrize(("stats", "iteration_stats", "expected"), [
    (scheduler_stats(details(1, 100, 3)), iteration(4, 20),
     (4, 100, 3, 4, 0.0125)),
    (scheduler_stats(None, running=3), iteration(3, 20), (3, 20, 3, 3, None)),
    (scheduler_stats(details(0, 0, 0, dummy=True), running=5), None, (5, 0, 0, 0, None)),
], ids=["iteration details", "no details: outputs", "dummy step"])
def test_step_from_stats(stats: Any, iteration_stats: Any,
                         expected: tuple[int, int, int, int, float | None]) -> None:
    result = step_from_stats(7, stats, iteration_stats, 42)
    assert (result.batch_size, result.prompt_tokens, result.decode_tokens,
            result.output_tokens, result.duration_s) == expected
    assert (result.index, result.waiting, result.time_ns) == (7, 2, 42)


def journal_with(outputs: list[int], capacity: int = 16) -> StepJournal:
    journal = StepJournal(JournalSettings(capacity=capacity))
    for generated in outputs:
        journal.record(scheduler_stats(), iteration(generated) if generated else None)
    return journal


@pytest.mark.parametrize(("outputs", "after", "count", "expected"), [
    ([1, 1, 1], 0, 1, [3]),
    ([1, 1, 1], 0, 2, [2, 3]),
    ([1, 0, 1], 0, 2, [1, 3]),  # a step that sampled nothing served no output
    ([1, 1, 1], 2, 5, [3]),  # never before the last attributed step
    ([1, 1, 1], 3, 1, []),
    ([1] * 6, 0, 6, [3, 4, 5, 6]),  # capacity 4: older steps are gone
])
def test_journal_sampled_after(outputs: list[int], after: int, count: int,
                               expected: list[int]) -> None:
    capacity = 4 if len(outputs) > 4 else 16
    journal = journal_with(outputs, capacity)
    assert [s.index for s in journal.sampled_after(after, count)] == expected


def test_journal_ignores_calls_without_scheduler_stats() -> None:
    journal = StepJournal()
    journal.record(None, iteration(3))
    assert journal.last_index == 0 and not journal.steps


class FakeTrace:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.timing: tuple[float, float] | None = None

    def step(self, step: EngineStep, new_tokens: int, scheduled_tokens: int | None = None
             ) -> None:
        self.steps.append((step.index, new_tokens))

    def engine_timing(self, queue_s: float, prefill_s: float) -> None:
        self.timing = (queue_s, prefill_s)


def test_outputs_are_attributed_to_the_newest_unattributed_steps() -> None:
    journal = journal_with([1, 1])  # steps before the request was submitted
    fake = FakeTrace()
    feed = VllmRequestSteps(journal, fake)  # type: ignore[arg-type]
    metrics = SimpleNamespace(queued_ts=10.0, scheduled_ts=10.5, first_token_ts=11.5)
    journal.record(scheduler_stats(), iteration(2))  # step 3: the first token
    feed.on_output(1, metrics)
    for _ in range(3):  # steps 4-6, consumed as one merged output of 3 tokens
        journal.record(scheduler_stats(), iteration(2))
    feed.on_output(3, metrics)
    feed.on_output(1, metrics)  # no newer step: the stat logger has not reported it yet
    assert fake.steps == [(3, 1), (4, 1), (5, 1), (6, 1)]
    assert fake.timing == (0.5, 1.0)


@pytest.mark.parametrize(("metrics", "expected"), [
    (SimpleNamespace(queued_ts=1.0, scheduled_ts=1.25, first_token_ts=2.0), (0.25, 0.75)),
    (SimpleNamespace(queued_ts=1.0, scheduled_ts=0.0, first_token_ts=2.0), None),
    (None, None),
])
def test_engine_timing_from_request_state_stats(metrics: Any,
                                                 expected: tuple[float, float] | None) -> None:
    assert engine_timing(metrics) == expected


def test_per_iteration_log_lines_are_dropped() -> None:
    quiet_iteration_log()
    quiet_iteration_log()
    logger = logging.getLogger("vllm.v1.metrics.loggers")
    assert len(logger.filters) == 1
    per_step = logger.makeRecord(logger.name, logging.INFO, "f", 1,
                                 "%sIteration(%d): %d context requests", ("", 1, 1), None)
    periodic = logger.makeRecord(logger.name, logging.INFO, "f", 1,
                                 "%sAvg prompt throughput: %.1f tokens/s", ("", 1.0), None)
    assert not logger.filter(per_step)
    assert logger.filter(periodic)
