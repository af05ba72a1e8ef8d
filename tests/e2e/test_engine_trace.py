"""With the real engine (vLLM CPU build), a request's trace reaches the engine steps that
served it: step events with the batch they ran in and the tokens they computed. The services
export to an OTLP receiver in the test (tests/otlp_sink.py)."""

from __future__ import annotations

import concurrent.futures
import secrets
from typing import Any

import httpx
import pytest

from tandem.engines.step_trace import DECODE_SPAN, PREFILL_SPAN, STEP_EVENT
from tests.otlp_sink import OtlpSink, SinkSpan

pytestmark = pytest.mark.e2e

MAX_TOKENS = 12
REQUESTS = 3
VLLM_SPAN = "llm_request"
"""vLLM's own span of a request: proof that the trace context reached the engine."""


def complete(base: str, trace_id: str, content: str) -> None:
    """A streamed chat completion, joined to ``trace_id`` through its traceparent header."""
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers,
                      timeout=300) as reply:
        reply.raise_for_status()
        reply.read()


def step_events(span: SinkSpan) -> list[dict[str, Any]]:
    return [event.attributes for event in span.events if event.name == STEP_EVENT]


def test_engine_steps_in_the_request_trace(running_system: Any, otlp_sink: OtlpSink) -> None:
    base = running_system.router_http_url.rstrip("/")
    trace_ids = [secrets.token_hex(16) for _ in range(REQUESTS)]
    # Concurrent requests, so that the engine batches them.
    with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
        list(pool.map(complete, [base] * REQUESTS, trace_ids,
                      [f"Count from {i} to {i + 20}, slowly." for i in range(REQUESTS)]))

    def complete_traces(spans: list[SinkSpan]) -> bool:
        names = {(s.trace_id, s.name) for s in spans}
        return all({(t, DECODE_SPAN), (t, VLLM_SPAN), (t, "POST /v1/chat/completions")} <= names
                   for t in trace_ids)

    spans = otlp_sink.wait_for(complete_traces, timeout_s=30)
    batch_sizes = []
    for trace_id in trace_ids:
        mine = [s for s in spans if s.trace_id == trace_id]
        by_name = {s.name: s for s in mine}
        server = next(s for s in mine if s.name == "tandem.v1.DecodeService/Generate"
                      and s.service == "tandem-decode")
        prefill, decode = by_name[PREFILL_SPAN], by_name[DECODE_SPAN]
        assert prefill.parent_span_id == server.span_id == decode.parent_span_id
        assert by_name[VLLM_SPAN].parent_span_id == server.span_id
        assert {"POST /v1/chat/completions", "tandem.route"} <= set(by_name)
        assert prefill.attributes["tandem.engine"].startswith("vllm-")
        # vLLM's own timings of the request (RequestStateStats).
        assert prefill.attributes["tandem.engine.queue_duration"] >= 0
        assert prefill.attributes["tandem.engine.prefill_duration"] > 0
        first = step_events(prefill)
        assert len(first) == 1
        assert first[0]["tandem.engine.step.prompt_tokens"] > 0
        assert first[0]["tandem.engine.request.new_tokens"] == 1
        decode_steps = step_events(decode)
        # One event per step that sampled a token for this request (merged outputs are
        # spread over the newest steps, so the count is exact either way).
        assert len(decode_steps) == MAX_TOKENS - 1
        assert decode.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
        for event in decode_steps:
            assert event["tandem.engine.batch_size"] >= 1
            assert event["tandem.engine.step.decode_tokens"] >= 1
            assert event["tandem.engine.step.duration"] > 0
            batch_sizes.append(event["tandem.engine.batch_size"])
        indices = [e["tandem.engine.step"] for e in [*first, *decode_steps]]
        assert indices == sorted(set(indices))
    assert max(batch_sizes) >= 2, "the concurrent requests never shared an engine step"
