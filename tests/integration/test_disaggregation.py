"""The router's prefill → decode orchestration over real gRPC (mock engines): who prefills,
the first token from the prefill worker, the continuation on the decode worker, the fallback
when the prefill worker fails, and one trace across all of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import prometheus_client
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tandem.telemetry import install_span_exporter, setup_telemetry
from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"
LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 80  # ~720 tokens
SHORT_PROMPT = "hello there"


def prefill_decisions(location: str, reason: str) -> float:
    return sum(sample.value for metric in prometheus_client.REGISTRY.collect()
               for sample in metric.samples
               if sample.name == "tandem_router_prefill_decisions_total"
               and sample.labels.get("tandem_prefill_location") == location
               and sample.labels.get("tandem_prefill_reason") == reason)


@pytest.fixture(scope="module")
async def exporter() -> InMemorySpanExporter:
    setup_telemetry("tandem-test")
    exporter = InMemorySpanExporter()
    install_span_exporter(exporter)
    return exporter


@pytest.fixture
async def system(redis_url: str, exporter: InMemorySpanExporter
                 ) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1, prefill_workers=1,
                                min_uncached_tokens=512)
    try:
        yield system
    finally:
        await system.close()


async def complete(system: InProcessSystem, prompt: str, max_tokens: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        reply = await client.post("/v1/completions", json={
            "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0})
    assert reply.status_code == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


async def test_a_long_prompt_is_prefilled_remotely_and_continued(
        system: InProcessSystem, exporter: InMemorySpanExporter) -> None:
    remote_before = prefill_decisions("remote", "long_prompt")
    exporter.clear()
    body = await complete(system, LONG_PROMPT, max_tokens=6)
    usage = body["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] == 6  # 1 from prefill + 5 from decode
    assert usage["prompt_tokens"] > 512
    assert prefill_decisions("remote", "long_prompt") == remote_before + 1

    spans = exporter.get_finished_spans()
    prefill_server = next(s for s in spans if s.name == "tandem.v1.PrefillService/Prefill"
                          and s.kind == SpanKind.SERVER)
    trace_spans = [s for s in spans if s.context.trace_id == prefill_server.context.trace_id]
    names = {(s.name, s.kind) for s in trace_spans}
    assert ("tandem.v1.PrefillService/Prefill", SpanKind.CLIENT) in names
    assert ("tandem.v1.DecodeService/Generate", SpanKind.SERVER) in names
    route = next(s for s in trace_spans if s.name == "tandem.route")
    assert route.attributes is not None
    assert route.attributes["tandem.prefill.location"] == "remote"
    assert route.attributes["tandem.prefill.reason"] == "long_prompt"


async def test_a_short_prompt_is_prefilled_by_the_decode_worker(
        system: InProcessSystem) -> None:
    local_before = prefill_decisions("local", "short_prompt")
    body = await complete(system, SHORT_PROMPT, max_tokens=3)
    assert body["usage"]["completion_tokens"] == 3  # type: ignore[index]
    assert prefill_decisions("local", "short_prompt") == local_before + 1


async def test_one_token_is_served_by_the_prefill_worker_alone(
        system: InProcessSystem) -> None:
    decode = next(w for w in system.workers if w.worker_id.startswith("decode"))
    steps_before = decode.engine.steps  # type: ignore[attr-defined]
    body = await complete(system, LONG_PROMPT, max_tokens=1)
    assert body["usage"]["completion_tokens"] == 1  # type: ignore[index]
    assert body["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert decode.engine.steps == steps_before  # type: ignore[attr-defined]


async def test_a_failed_prefill_worker_falls_back_to_local_prefill(
        system: InProcessSystem) -> None:
    prefill = next(w for w in system.workers if w.worker_id.startswith("prefill"))
    await prefill.server.server.stop(grace=None)  # gone without deregistering: UNAVAILABLE
    fallback_before = prefill_decisions("local", "fallback")
    body = await complete(system, LONG_PROMPT, max_tokens=4)
    assert body["usage"]["completion_tokens"] == 4  # type: ignore[index]
    assert prefill_decisions("local", "fallback") == fallback_before + 1


async def test_a_stop_string_across_the_handoff_ends_the_generation(redis_url: str) -> None:
    """A stop string that begins in the prefill worker's token and ends in the decode
    worker's: the router cuts the text where it began, finishes with "stop", and the decode
    worker's request is aborted (the mock engine, like vLLM, matches stop strings in the text
    it generates itself only)."""
    system = await start_system(redis_url, decode_workers=1, prefill_workers=1,
                                disaggregation="always")
    try:
        async def complete_with(stop: str | None, stream: bool = False) -> tuple[str, str]:
            body: dict[str, object] = {"model": MODEL, "prompt": SHORT_PROMPT, "max_tokens": 6,
                                       "ignore_eos": True, "temperature": 0, "stop": stop,
                                       "stream": stream}
            async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
                reply = await client.post("/v1/completions", json=body)
            assert reply.status_code == 200, reply.text
            if not stream:
                choice = reply.json()["choices"][0]
                return choice["text"], choice["finish_reason"]
            chunks = [json.loads(line[len("data: "):]) for line in reply.text.splitlines()
                      if line.startswith("data: {")]
            return ("".join(c["choices"][0]["text"] for c in chunks if c["choices"]),
                    next(c["choices"][0]["finish_reason"] for c in chunks
                         if c["choices"] and c["choices"][0]["finish_reason"]))

        text, reason = await complete_with(None)
        assert reason == "length"
        first, second = text.split(" tok")[1:3]  # the mock's token texts are " tok<id>"
        stop = f"{first[-1]} tok{second[0]}"  # from the first token into the second
        assert await complete_with(stop) == (f" tok{first[:-1]}", "stop")
        assert await complete_with(stop, stream=True) == (f" tok{first[:-1]}", "stop")
        assert await complete_with("not in the text") == (text, "length")
        engine = system.workers[0].engine
        async with asyncio.timeout(5):
            while engine.load().running:  # the cut request was aborted, not run to its end
                await asyncio.sleep(0.02)
    finally:
        await system.close()
