"""One request is one trace, from the router's HTTP span down to the engine steps that served
it; KV-store transfers join the trace of the caller, across the process boundary; a
disaggregated request's trace holds its KV put (prefill worker) and get (decode worker) down to
the store's own spans, and the workers record them as the kv_put / kv_get stages."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator

import httpx
import prometheus_client
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.kvstore.launch import StoreProcess
from tandem import telemetry
from tandem.engines.step_trace import DECODE_SPAN, PREFILL_SPAN, STEP_EVENT
from tandem.kvclient import KVClient, KVClientSettings
from tandem.kvclient.transport import DATAPLANE, GRPC, LOCAL
from tandem.stages import Stage, prometheus_name
from tandem.telemetry import (
    TelemetrySettings,
    context_from_headers,
    setup_tracing,
    trace_headers,
)
from tests.integration.system import start_system
from tests.otlp_sink import BATCH_DELAY_ENV, OtlpSink

MAX_TOKENS = 5


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_one_trace_from_http_to_engine_steps(redis_url: str,
                                                   exporter: InMemorySpanExporter) -> None:
    system = await start_system(redis_url, decode_workers=1)
    try:
        exporter.clear()
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http_client:
            reply = await http_client.post("/v1/chat/completions", json={
                "model": "SmolLM2-135M-Instruct", "stream": True, "max_tokens": MAX_TOKENS,
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
    prefill, decode = by_name[PREFILL_SPAN], by_name[DECODE_SPAN]
    assert child_of(route, root) and child_of(client, root)
    assert child_of(server, client)
    assert child_of(prefill, server) and child_of(decode, server)
    assert route.attributes is not None and route.attributes["tandem.route.decode_worker"]
    # GenAI attributes; streaming made no span per token: one span per engine phase.
    assert root.attributes is not None
    assert root.attributes["gen_ai.request.model"] == "SmolLM2-135M-Instruct"
    assert root.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
    assert server.attributes is not None
    assert server.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
    assert len(trace_spans) == 6

    # The prefill phase ends at the first token, where the decode phase starts.
    assert prefill.end_time is not None and decode.start_time == prefill.end_time
    assert prefill.attributes is not None and decode.attributes is not None
    assert prefill.attributes["gen_ai.usage.input_tokens"] > 0
    assert decode.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS
    assert decode.attributes["gen_ai.response.finish_reasons"] == ("length",)
    # One step event per engine step that served the request: the prefill step (which
    # sampled the first token) and one decode step per further token.
    prefill_steps = [e for e in prefill.events if e.name == STEP_EVENT]
    decode_steps = [e for e in decode.events if e.name == STEP_EVENT]
    assert len(prefill_steps) >= 1 and len(decode_steps) == MAX_TOKENS - 1
    first = prefill_steps[-1].attributes
    assert first is not None
    assert first["tandem.engine.request.new_tokens"] == 1
    assert first["tandem.engine.batch_size"] >= 1
    assert first["tandem.engine.step.prompt_tokens"] >= first[
        "tandem.engine.request.scheduled_tokens"] > 0
    for event in decode_steps:
        attributes = event.attributes
        assert attributes is not None
        assert attributes["tandem.engine.batch_size"] >= 1
        assert attributes["tandem.engine.step.decode_tokens"] >= 1
        assert attributes["tandem.engine.request.scheduled_tokens"] == 1
        assert attributes["tandem.engine.step.duration"] > 0
    indices = [e.attributes["tandem.engine.step"] for e in [*prefill_steps, *decode_steps]
               if e.attributes is not None]
    assert indices == sorted(set(indices))
    assert decode.attributes["tandem.engine.steps"] == MAX_TOKENS - 1


async def test_the_engine_canary_makes_no_trace(redis_url: str,
                                               exporter: InMemorySpanExporter) -> None:
    """The worker's health canary carries no trace context: no root engine span appears (the
    router's readiness probe is a real request, traced from its route span)."""
    exporter.clear()
    system = await start_system(redis_url, decode_workers=1)
    await system.close()
    engine_spans = [s for s in exporter.get_finished_spans()
                    if s.name in (PREFILL_SPAN, DECODE_SPAN)]
    assert all(s.parent is not None for s in engine_spans)


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def traced_store(redis_url: str, sink: OtlpSink) -> Iterator[StoreProcess]:
    folder = tempfile.mkdtemp(prefix="tandem-trace-kv-")
    arena = f"/dev/shm/tandem-trace-kv-{os.getpid()}.arena"
    saved = dict(os.environ)
    os.environ.update(BATCH_DELAY_ENV)
    store = StoreProcess(redis_url, arena, os.path.join(folder, "nvme"),
                         "--slot-bytes", str(64 * 1024), "--cxl-capacity-bytes",
                         str(128 * 64 * 1024), "--otlp-endpoint", sink.endpoint,
                         namespace=f"trace-{os.getpid()}")
    try:
        store.start()
        yield store
    finally:
        os.environ.clear()
        os.environ.update(saved)
        store.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(arena):
            os.unlink(arena)


@pytest.mark.parametrize("transport", [LOCAL, DATAPLANE, GRPC])
async def test_kv_transfers_join_the_callers_trace(
        traced_store: StoreProcess, sink: OtlpSink, exporter: InMemorySpanExporter,
        transport: str) -> None:
    same_host = transport == LOCAL
    hashes = [hashlib.blake2b(f"{transport}-{i}".encode(), digest_size=16).digest()
              for i in range(3)]
    payloads = [hashlib.shake_128(h).digest(40_000) for h in hashes]
    exporter.clear()
    settings = KVClientSettings(same_host=same_host, force_grpc=transport == GRPC)
    with trace.get_tracer("test").start_as_current_span("request") as request_span:
        async with KVClient(traced_store.address, settings) as kv:
            await kv.put(hashes, payloads)
            got = await kv.get(hashes)
    assert [bytes(b) for b in got] == payloads
    trace_id = f"{request_span.get_span_context().trace_id:032x}"

    local = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("kvclient.put", "kvclient.get"):
        attributes = local[name].attributes
        assert attributes is not None
        assert child_of(local[name], local["request"])
        assert attributes["tandem.kv.blocks"] == 3
        assert attributes["tandem.kv.bytes"] == 3 * 40_000
        assert attributes["tandem.kv.transport"] == transport
    get_attributes = local["kvclient.get"].attributes
    assert get_attributes is not None and get_attributes["tandem.kv.tier"] == "cxl"

    server_put = "kvstore.commit" if same_host else "kvstore.put"
    spans = sink.wait_for(lambda got: {server_put, "kvstore.get"} <= {
        s.name for s in got if s.trace_id == trace_id})
    client_span = {"kvstore.get": local["kvclient.get"], server_put: local["kvclient.put"]}
    for name, parent in client_span.items():
        # One server span per call; the remote path spreads blocks over parallel streams.
        served = [s for s in spans if s.trace_id == trace_id and s.name == name]
        assert {s.parent_span_id for s in served} == {f"{parent.context.span_id:016x}"}
        assert {s.service for s in served} == {"tandem-kvstore"}
        assert {s.attributes["tandem.kv.tier"] for s in served} == {"cxl"}
        assert {s.attributes["tandem.kv.transport"] for s in served} == {transport}
        assert sum(s.attributes["tandem.kv.blocks"] for s in served) == 3


LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 80  # ~720 tokens: remote prefill
MOCK_BLOCK_BYTES = 4096
"""The mock engine's KV block in the store without a profile (tandem/engines/mock/transfer.py)."""


def stage_samples(stage: Stage) -> float:
    """Samples of a stage's histogram in this process's registry (the in-process workers')."""
    name = f"{prometheus_name(stage)}_count"
    return sum(sample.value for metric in prometheus_client.REGISTRY.collect()
               for sample in metric.samples if sample.name == name)


async def test_a_disaggregated_request_is_one_trace_down_to_the_kv_store(
        redis_url: str, traced_store: StoreProcess, sink: OtlpSink,
        exporter: InMemorySpanExporter) -> None:
    system = await start_system(redis_url, decode_workers=1, prefill_workers=1,
                                kvstore_address=traced_store.address)
    puts_before, gets_before = stage_samples(Stage.KV_PUT), stage_samples(Stage.KV_GET)
    try:
        exporter.clear()
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as http_client:
            reply = await http_client.post("/v1/completions", json={
                "model": "SmolLM2-135M-Instruct", "prompt": LONG_PROMPT,
                "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0})
        assert reply.status_code == 200, reply.text
        prompt_tokens = reply.json()["usage"]["prompt_tokens"]
    finally:
        await system.close()

    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "POST /v1/completions")
    assert root.parent is None
    mine = [s for s in spans if s.context.trace_id == root.context.trace_id]

    def one(name: str, kind: SpanKind | None = None, parent: ReadableSpan | None = None
            ) -> ReadableSpan:
        found = [s for s in mine if s.name == name and kind in (None, s.kind)
                 and (parent is None or child_of(s, parent))]
        assert len(found) == 1, f"{len(found)} spans {name} ({kind}) under {parent and parent.name}"
        return found[0]

    route = one("tandem.route", parent=root)
    assert route.attributes is not None
    assert route.attributes["tandem.prefill.location"] == "remote"
    prefill_client = one("tandem.v1.PrefillService/Prefill", SpanKind.CLIENT, root)
    prefill_server = one("tandem.v1.PrefillService/Prefill", SpanKind.SERVER, prefill_client)
    generate_client = one("tandem.v1.DecodeService/Generate", SpanKind.CLIENT, root)
    generate_server = one("tandem.v1.DecodeService/Generate", SpanKind.SERVER, generate_client)
    prefill_engine = one(PREFILL_SPAN, parent=prefill_server)
    put = one("kvclient.put", parent=prefill_server)
    get = one("kvclient.get", parent=generate_server)
    decode_engine = one(DECODE_SPAN, parent=generate_server)
    continued_engine = one(PREFILL_SPAN, parent=generate_server)

    # The prefill stores the prompt's blocks (a partial tail included) before its first token
    # leaves the engine; the decode worker loads exactly those and computes one token.
    blocks = -(-prompt_tokens // 16)
    for transfer in (put, get):
        assert transfer.attributes is not None
        assert transfer.attributes["tandem.kv.blocks"] == blocks
        assert transfer.attributes["tandem.kv.bytes"] == blocks * MOCK_BLOCK_BYTES
        assert transfer.attributes["tandem.kv.transport"] == LOCAL
    assert put.attributes is not None and get.attributes is not None
    assert prefill_client.attributes is not None  # the hand-off's size, on the router's call
    assert prefill_client.attributes["tandem.kv.blocks"] == blocks
    assert put.attributes["tandem.kv.stored_blocks"] == blocks
    assert put.attributes["tandem.kv.tier"] == get.attributes["tandem.kv.tier"] == "cxl"
    assert prefill_engine.end_time is not None and put.start_time is not None
    assert put.start_time >= prefill_engine.end_time  # after the first token was computed
    assert put.end_time is not None and prefill_server.end_time is not None
    assert put.end_time <= prefill_server.end_time
    assert get.end_time is not None and continued_engine.start_time is not None
    assert get.end_time <= continued_engine.start_time
    computed = [e.attributes["tandem.engine.request.scheduled_tokens"]
                for e in continued_engine.events if e.attributes is not None]
    assert computed == [1]
    assert decode_engine.attributes is not None
    assert decode_engine.attributes["gen_ai.usage.output_tokens"] == MAX_TOKENS - 1

    # The store's spans of both transfers, in the store process, children of the client spans.
    trace_id = f"{root.context.trace_id:032x}"
    received = sink.wait_for(lambda got: {"kvstore.commit", "kvstore.get"} <= {
        s.name for s in got if s.trace_id == trace_id})
    for name, parent in (("kvstore.commit", put), ("kvstore.get", get)):
        served = [s for s in received if s.trace_id == trace_id and s.name == name]
        assert {s.parent_span_id for s in served} == {f"{parent.context.span_id:016x}"}
        assert {s.service for s in served} == {"tandem-kvstore"}
        assert sum(s.attributes["tandem.kv.blocks"] for s in served) == blocks

    # One sample per request and direction in the workers' stage histograms.
    assert stage_samples(Stage.KV_PUT) == puts_before + 1
    assert stage_samples(Stage.KV_GET) == gets_before + 1


def _traced_child(endpoint: str, headers: dict[str, str]) -> None:
    """As the KV connector in a vLLM process: forked from a worker (it inherits the worker's
    provider) or spawned by vLLM (which installs its own global provider first)."""
    if telemetry._provider is None:  # spawned
        trace.set_tracer_provider(TracerProvider())  # vLLM's worker tracer, exporting nowhere
    assert not telemetry._processors.processors, "the parent's exporters were inherited"
    setup_tracing("tandem-child", TelemetrySettings(otlp_endpoint=endpoint))
    setup_tracing("tandem-child", TelemetrySettings(otlp_endpoint=endpoint))  # idempotent
    assert len(telemetry._processors.processors) == 1
    with telemetry.tracer("test.child").start_as_current_span(
            "child-work", context=context_from_headers(headers)):
        pass
    assert telemetry._processors.force_flush(10_000)


@pytest.mark.parametrize(("start_method", "service"), [
    ("fork", "tandem-test"), ("spawn", "tandem-child")])
def test_a_child_process_exports_its_spans_into_the_callers_trace(
        sink: OtlpSink, exporter: InMemorySpanExporter, start_method: str, service: str) -> None:
    """vLLM forks its engine core from the worker, which keeps the worker's tracer provider
    (and service name) but drops the worker's exporters for its own; vLLM spawns its workers,
    where vLLM's provider is the global one and tandem's spans use tandem's all the same. Either
    way the spans join the trace whose context the request carried."""
    with trace.get_tracer("test").start_as_current_span("request") as request_span:
        headers = trace_headers()
    child = multiprocessing.get_context(start_method).Process(
        target=_traced_child, args=(sink.endpoint, headers))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    trace_id = f"{request_span.get_span_context().trace_id:032x}"
    received = sink.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    work = next(s for s in received if s.trace_id == trace_id)
    assert work.name == "child-work"
    assert work.parent_span_id == f"{request_span.get_span_context().span_id:016x}"
    assert work.service == service
