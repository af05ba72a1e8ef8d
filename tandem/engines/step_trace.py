"""The engine work of one request in its trace, down to the engine step, for every engine.

A request gets at most two spans, children of the span whose context came in the request's
``trace_headers`` (the worker's gRPC server span):

- ``tandem.engine.prefill``: submission → first token (queueing included);
- ``tandem.engine.decode``: first token → finish (absent when the first token is the last).

Each engine step (scheduler iteration + forward pass) that served the request adds one
``tandem.engine.step`` event to the span of its phase, with the batch it ran in and the tokens
it computed. Streaming never makes a span per token: a phase keeps at most
``max_step_events`` events and only counts later steps (its end attributes carry the totals).
The engine-side stages of the latency breakdown (queue, prefill, first decode step) are
recorded here too, so every engine reports them the same way.
"""

from __future__ import annotations

import dataclasses
import time

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from tandem.engines.base import EngineRequest
from tandem.stages import Stage, record_stage
from tandem.telemetry import context_from_headers, tracer

_tracer = tracer("tandem.engine")

PREFILL_SPAN = "tandem.engine.prefill"
DECODE_SPAN = "tandem.engine.decode"
STEP_EVENT = "tandem.engine.step"


@dataclasses.dataclass(frozen=True)
class StepTraceSettings:
    """How much of a request's engine work its trace keeps."""

    max_step_events: int = 32
    """Step events per phase span; later steps are counted in the span's totals only."""


@dataclasses.dataclass(frozen=True)
class EngineStep:
    """One engine step, engine-wide (not per request)."""

    index: int
    """Engine step counter."""
    batch_size: int
    """Requests scheduled in the step."""
    waiting: int
    """Requests waiting after the step."""
    prompt_tokens: int
    """Prompt (prefill) tokens computed in the step, all requests."""
    decode_tokens: int
    """Decode tokens computed in the step, all requests."""
    output_tokens: int
    """Tokens sampled in the step, all requests."""
    time_ns: int
    """Wall clock (ns since the epoch) when the step's outputs were known."""
    duration_s: float | None = None
    """Forward-pass time, when the engine reports it."""

    def attributes(self) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            "tandem.engine.step": self.index,
            "tandem.engine.batch_size": self.batch_size,
            "tandem.engine.waiting": self.waiting,
            "tandem.engine.step.prompt_tokens": self.prompt_tokens,
            "tandem.engine.step.decode_tokens": self.decode_tokens,
        }
        if self.duration_s is not None:
            attributes["tandem.engine.step.duration"] = self.duration_s
        return attributes


class _Phase:
    """One phase span and the totals of the steps it saw."""

    def __init__(self, span: trace.Span, max_events: int) -> None:
        self.span = span
        self.recording = span.is_recording()
        self.max_events = max_events
        self.steps = 0
        self.tokens = 0
        self.batch_max = 0
        self.batch_sum = 0

    def add(self, step: EngineStep, new_tokens: int, scheduled_tokens: int | None) -> None:
        self.steps += 1
        self.tokens += new_tokens
        self.batch_max = max(self.batch_max, step.batch_size)
        self.batch_sum += step.batch_size
        if not self.recording or self.steps > self.max_events:
            return
        attributes = step.attributes()
        attributes["tandem.engine.request.new_tokens"] = new_tokens
        if scheduled_tokens is not None:
            attributes["tandem.engine.request.scheduled_tokens"] = scheduled_tokens
        self.span.add_event(STEP_EVENT, attributes, timestamp=step.time_ns)

    def end(self, end_ns: int | None = None) -> None:
        if self.recording:
            self.span.set_attributes({
                "tandem.engine.steps": self.steps,
                "tandem.engine.step_events_dropped": max(0, self.steps - self.max_events),
                "tandem.engine.batch_size.max": self.batch_max,
                "tandem.engine.batch_size.mean": self.batch_sum / self.steps if self.steps
                else 0.0,
            })
        self.span.end(end_time=end_ns)


class RequestTrace:
    """Spans, step events and engine-side stages of one request (see the module docstring).

    The engine calls ``step`` for every step that served the request (``new_tokens`` sampled
    for it, ``scheduled_tokens`` computed for it when known), ``engine_timing`` when the engine
    measures queue and prefill itself, and ``finish`` once."""

    def __init__(self, request: EngineRequest, model: str, engine: str,
                 settings: StepTraceSettings) -> None:
        self.settings = settings
        self.model = model
        self.submitted_ns = time.time_ns()
        self.first_scheduled_ns: int | None = None
        self.first_token_ns: int | None = None
        self.engine_timed = False
        self.first_decode_recorded = False
        self.output_tokens = 0
        self.parent = context_from_headers(request.trace_headers)
        span = _tracer.start_span(PREFILL_SPAN, context=self.parent, start_time=self.submitted_ns,
                                  attributes={
                                      "gen_ai.request.model": model,
                                      "gen_ai.usage.input_tokens": len(request.prompt_token_ids),
                                      "tandem.request_id": request.request_id,
                                      "tandem.engine": engine})
        self.prefill: _Phase | None = _Phase(span, settings.max_step_events)
        self.decode: _Phase | None = None
        self.finished = False

    def step(self, step: EngineStep, new_tokens: int, scheduled_tokens: int | None = None
             ) -> None:
        if self.finished:
            return
        if self.first_scheduled_ns is None:  # the step began its forward pass this long ago
            self.first_scheduled_ns = step.time_ns - int((step.duration_s or 0.0) * 1e9)
        self.output_tokens += new_tokens
        if self.first_token_ns is None:
            assert self.prefill is not None
            self.prefill.add(step, new_tokens, scheduled_tokens)
            if new_tokens > 0:
                self._first_token(step.time_ns)
            return
        if self.decode is None:
            if self.prefill is not None:  # kept open in case the first token was the last
                self.prefill.end(self.first_token_ns)
                self.prefill = None
            span = _tracer.start_span(DECODE_SPAN, context=self.parent,
                                      start_time=self.first_token_ns,
                                      attributes={"gen_ai.request.model": self.model})
            self.decode = _Phase(span, self.settings.max_step_events)
        self.decode.add(step, new_tokens, scheduled_tokens)
        if new_tokens > 0 and not self.first_decode_recorded:
            self.first_decode_recorded = True
            record_stage(Stage.FIRST_DECODE_STEP, (step.time_ns - self.first_token_ns) / 1e9)

    def _first_token(self, at_ns: int) -> None:
        self.first_token_ns = at_ns
        if not self.engine_timed and self.first_scheduled_ns is not None:
            scheduled = max(self.submitted_ns, self.first_scheduled_ns)
            record_stage(Stage.QUEUE, (scheduled - self.submitted_ns) / 1e9)
            record_stage(Stage.PREFILL, (at_ns - scheduled) / 1e9)

    def engine_timing(self, queue_s: float, prefill_s: float) -> None:
        """Queue and prefill time as the engine measured them (replaces the step estimate)."""
        if self.engine_timed:
            return
        self.engine_timed = True
        record_stage(Stage.QUEUE, queue_s)
        record_stage(Stage.PREFILL, prefill_s)
        phase = self.prefill or self.decode
        if phase is not None and phase.recording:
            phase.span.set_attributes({"tandem.engine.queue_duration": queue_s,
                                       "tandem.engine.prefill_duration": prefill_s})

    def finish(self, finish_reason: str | None, output_tokens: int | None = None) -> None:
        """Ends the open spans; ``finish_reason`` None means the request was abandoned;
        ``output_tokens`` (the engine's count) replaces the count of the attributed steps."""
        if self.finished:
            return
        self.finished = True
        if output_tokens is not None:
            self.output_tokens = output_tokens
        reason = finish_reason or "abort"
        for phase in (self.prefill, self.decode):
            if phase is None:
                continue
            if phase.recording:
                phase.span.set_attributes({"gen_ai.response.finish_reasons": [reason],
                                           "gen_ai.usage.output_tokens": self.output_tokens})
                if reason == "error":
                    phase.span.set_status(trace.Status(trace.StatusCode.ERROR, reason))
            phase.end(self.first_token_ns if phase is self.prefill else None)
        self.prefill = self.decode = None


def start_request_trace(request: EngineRequest, model: str, engine: str,
                        settings: StepTraceSettings) -> RequestTrace | None:
    """A trace for a request that carries trace context; None for internal requests (the
    health canary), which stay out of traces and of the latency breakdown."""
    if not request.trace_headers:
        return None
    return RequestTrace(request, model, engine, settings)
