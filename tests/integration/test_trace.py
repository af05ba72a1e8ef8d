"""One request is one trace, from the router's HTTP span down to the decode worker."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tandem.telemetry import install_span_exporter, setup_telemetry
from tests.integration.system import start_system


async def test_one_trace_spans_router_and_decode(redis_url: str) -> None:
    setup_telemetry("tandem-test")
    exporter = InMemorySpanExporter()
    install_span_exporter(exporter)
    system = await start_system(redis_url, decode_workers=1)
    try:
        exporter.clear()
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
            reply = await client.post("/v1/chat/completions", json={
                "model": "SmolLM2-135M-Instruct", "stream": True, "max_tokens": 5,
                "messages": [{"role": "user", "content": "trace me"}]})
            assert reply.status_code == 200
    finally:
        await system.close()

    spans = exporter.get_finished_spans()
    http = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert len(http) == 1
    root = http[0]
    assert root.kind == SpanKind.SERVER
    assert root.parent is None
    trace_spans = [s for s in spans if s.context.trace_id == root.context.trace_id]
    by_name = {s.name: s for s in trace_spans}
    route = by_name["tandem.route"]
    client = next(s for s in trace_spans if s.name == "tandem.v1.DecodeService/Generate"
                  and s.kind == SpanKind.CLIENT)
    server = next(s for s in trace_spans if s.name == "tandem.v1.DecodeService/Generate"
                  and s.kind == SpanKind.SERVER)
    assert route.parent is not None and route.parent.span_id == root.context.span_id
    assert client.parent is not None and client.parent.span_id == root.context.span_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert route.attributes is not None and route.attributes["tandem.route.decode_worker"]
    # GenAI attributes; streaming made no span per token.
    assert root.attributes is not None
    assert root.attributes["gen_ai.request.model"] == "SmolLM2-135M-Instruct"
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert server.attributes is not None and server.attributes["gen_ai.usage.output_tokens"] == 5
    assert len(trace_spans) == 4
