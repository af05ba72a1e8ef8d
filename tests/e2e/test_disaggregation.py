"""Disaggregated serving with the real engine: a prefill worker computes a prompt's KV cache
and writes its blocks to the KV store; the decode worker loads exactly those blocks and goes on
from the prefill's first token. Greedy output must be token for token what aggregated serving
(the decode worker prefilling the same prompt itself) produces, from 10 to 3,000 prompt tokens
(3,000 is past the engine's 2,048-token step budget: a chunked prefill). A client that goes
away cancels prefill and decode and leaves no slot or pinned block behind. The KV connector's
put (in the prefill worker's engine core) and get (the decode worker's) are spans of the
request's trace and samples of the kv_put / kv_get stages on the workers' /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import time
import urllib.request
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis

from services.router.prompts import PromptBuilder
from tandem.discovery import WorkerInfo, worker_key
from tandem.engines.vllm_dtype import kv_bytes_per_token
from tandem.hashing import hash_salt
from tandem.model import default_model_dir
from tandem.stages import Stage, prometheus_name
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import MODEL, RunningSystem, system_dtype
from tests.otlp_sink import OtlpSink, SinkSpan

SERVER = 2
"""OTLP's span kind of a server span (``Span.SpanKind``)."""
ENGINE_SPANS = ("tandem.engine.prefill", "tandem.engine.decode")
"""The engine's spans of one request (``tandem.engines.step_trace``)."""

pytestmark = pytest.mark.e2e

OUTPUT_TOKENS = 24


def english_text() -> str:
    """Plenty of natural text, the same on every machine (docstrings of the standard library):
    random token ids would sit at near-ties where any engine may pick either token."""
    import argparse
    import asyncio as aio
    import collections
    import json as js
    import logging
    import subprocess
    import threading
    import unittest
    return "\n\n".join(inspect.getdoc(module) or "" for module in (
        argparse, subprocess, logging, threading, unittest, collections, js, aio,
        argparse.ArgumentParser, subprocess.Popen, logging.Logger, threading.Thread))


@pytest.fixture(scope="module")
def prompts() -> PromptBuilder:
    return PromptBuilder(str(default_model_dir()), 4096)


def prompt_of(prompts: PromptBuilder, tokens: int) -> list[int]:
    text_tokens = prompts.completion(english_text())
    assert len(text_tokens) >= tokens, "the prompt corpus is too short"
    return text_tokens[:tokens]


def worker(system: RunningSystem, worker_id: str) -> WorkerInfo:
    with redis.Redis.from_url(system.redis_url) as client:
        raw = client.get(worker_key(system.namespace, worker_id))
    assert raw is not None, f"{worker_id} is not registered"
    return WorkerInfo.from_json(raw)


@pytest.fixture(scope="module")
async def channels(running_system: RunningSystem
                   ) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    decode = grpc.aio.insecure_channel(worker(running_system, "decode-0").address)
    prefill = grpc.aio.insecure_channel(worker(running_system, "prefill-0").address)
    yield decode, prefill
    await decode.close()
    await prefill.close()


def greedy(max_tokens: int = OUTPUT_TOKENS) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


async def generate(channel: grpc.aio.Channel, request: worker_pb2.GenerateRequest
                   ) -> tuple[list[int], common_pb2.Usage]:
    tokens: list[int] = []
    usage = common_pb2.Usage()
    async for response in worker_pb2_grpc.DecodeServiceStub(channel).Generate(request):
        tokens += response.delta.token_ids
        if response.HasField("usage"):
            usage = response.usage
    return tokens, usage


@pytest.mark.parametrize("length", [10, 300, 1100, 3000])
async def test_disaggregated_output_is_token_identical_to_aggregated(
        channels: tuple[grpc.aio.Channel, grpc.aio.Channel], prompts: PromptBuilder,
        length: int) -> None:
    """The prefill worker hands over the prompt's KV exactly as it computed it: every whole
    block and the partial tail, so the decode worker computes only the prefill's first token
    (as aggregated serving's first decode step does) and the output must equal aggregated
    serving's cold run (the whole prompt computed, in the same chunks of the engine's step
    budget). Aggregated serving with a warm prefix cache is not always that answer itself:
    vLLM recomputes the tail in a different chunk (bf16 numerics; at 3,000 tokens it differs,
    docs/disaggregation.md) - it is checked where vLLM's own two answers agree."""
    decode, prefill = channels
    prompt = prompt_of(prompts, length)
    # Separate salts: neither path can reuse the other's blocks, in the store or on device.
    aggregated = worker_pb2.GenerateRequest(
        request_id=f"agg-{length}", prompt_token_ids=prompt, sampling=greedy(), model=MODEL,
        hash_salt=hash_salt(MODEL, "", f"aggregated-{length}"))
    cold, cold_usage = await generate(decode, aggregated)
    aggregated.request_id = f"agg-warm-{length}"
    warm, warm_usage = await generate(decode, aggregated)

    salt = hash_salt(MODEL, "", f"disaggregated-{length}")
    handoff: worker_pb2.PrefillResponse = await worker_pb2_grpc.PrefillServiceStub(
        prefill).Prefill(worker_pb2.PrefillRequest(
            request_id=f"pre-{length}", prompt_token_ids=prompt, sampling=greedy(),
            model=MODEL, hash_salt=salt))
    block_size = handoff.kv_handle.block_size
    assert len(handoff.kv_handle.block_hashes) == -(-length // block_size)  # a tail included
    assert handoff.kv_handle.num_tokens == length
    continued, usage = await generate(decode, worker_pb2.GenerateRequest(
        request_id=f"dec-{length}", prompt_token_ids=prompt, sampling=greedy(), model=MODEL,
        first_token_id=handoff.first_token_id, kv_handle=handoff.kv_handle, hash_salt=salt))
    disaggregated = [handoff.first_token_id, *continued]

    assert cold_usage.cached_tokens == 0
    assert warm_usage.cached_tokens == ((length - 1) // block_size) * block_size
    # The decode worker loaded the whole prompt and computed only the first token's KV.
    assert usage.cached_tokens == length
    assert usage.prompt_tokens == length and usage.completion_tokens == OUTPUT_TOKENS
    assert disaggregated == cold
    if cold == warm:
        assert disaggregated == warm


async def test_the_router_prefills_long_prompts_remotely(
        running_system: RunningSystem, channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
        prompts: PromptBuilder) -> None:
    text = english_text()[:6000]
    async with grpc.aio.insecure_channel(running_system.router_grpc_address) as channel:
        router = router_pb2_grpc.RouterServiceStub(channel)
        explained = await router.ExplainRoute(router_pb2.ExplainRouteRequest(
            model=MODEL, prompt=text, tenant="e2e-router"))
        assert explained.prefill_worker_id == "prefill-0"
        assert explained.prefill_reason == "long_prompt"
        tokens: list[int] = []
        async for response in router.Complete(router_pb2.CompleteRequest(
                model=MODEL, prompt=text, sampling=greedy(), tenant="e2e-router")):
            tokens += response.delta.token_ids
    decode, _ = channels
    aggregated, _ = await generate(decode, worker_pb2.GenerateRequest(
        request_id="agg-router", prompt_token_ids=prompts.completion(text), sampling=greedy(),
        model=MODEL, hash_salt=hash_salt(MODEL, "", "aggregated-router")))
    assert tokens == aggregated


def pinned_blocks(system: RunningSystem) -> float:
    for url in system.metrics_urls:
        with urllib.request.urlopen(url, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("tandem_kvstore_pinned_blocks"):
                    return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no KV store exports tandem_kvstore_pinned_blocks")


async def running(channel: grpc.aio.Channel) -> int:
    load = await worker_pb2_grpc.WorkerServiceStub(channel).GetLoad(worker_pb2.GetLoadRequest())
    return int(load.running_requests + load.waiting_requests)


@pytest.mark.parametrize("after_tokens", [0, 3])
async def test_a_client_that_goes_away_frees_everything(
        running_system: RunningSystem, channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
        prompts: PromptBuilder, otlp_sink: OtlpSink, after_tokens: int) -> None:
    """Disconnect during the remote prefill (no token yet) or during decode (3 tokens in): the
    engine request of the worker the client left is aborted (its trace says so), not run to
    its end, and nothing stays running or pinned."""
    decode, prefill = channels
    prompt_text = english_text()[:9000] + f" ({after_tokens})"
    body = {"model": MODEL, "prompt": prompt_text, "max_tokens": 400, "ignore_eos": True,
            "stream": True, "user": f"cancel-{after_tokens}"}
    trace_id = secrets.token_hex(16)
    received: list[str] = []

    async def consume() -> None:
        # A 2,300-token prefill takes seconds here, minutes on a machine shared with others.
        async with httpx.AsyncClient(base_url=running_system.router_http_url,
                                     timeout=600) as client, \
                client.stream("POST", "/v1/completions", json=body, headers={
                    "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("data: {"):
                    received.append(line)
                    if len(received) >= after_tokens:
                        return

    if after_tokens == 0:  # leave a third of the way into the remote prefill
        started = time.perf_counter()
        await worker_pb2_grpc.PrefillServiceStub(prefill).Prefill(worker_pb2.PrefillRequest(
            request_id="cancel-timing", prompt_token_ids=prompts.completion(prompt_text),
            sampling=greedy(1), model=MODEL, hash_salt=hash_salt(MODEL, "", "cancel-timing")))
        prefill_s = time.perf_counter() - started
        task = asyncio.create_task(consume())
        await asyncio.sleep(prefill_s / 3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not received, "the first token arrived before the client left"
    else:
        await consume()
    async with asyncio.timeout(60):
        while await running(prefill) or await running(decode) or pinned_blocks(running_system):
            await asyncio.sleep(0.2)
    # Freed is not enough (a request that runs to its end frees everything too): the engine
    # spans of the worker serving the request when the client left end as aborted.
    left = "tandem-prefill" if after_tokens == 0 else "tandem-decode"

    def engine_spans(spans: list[SinkSpan]) -> list[SinkSpan]:
        return [s for s in spans if s.trace_id == trace_id and s.service == left
                and s.name in ENGINE_SPANS and "gen_ai.response.finish_reasons" in s.attributes]

    ended = engine_spans(otlp_sink.wait_for(lambda spans: bool(engine_spans(spans))))
    assert {tuple(s.attributes["gen_ai.response.finish_reasons"]) for s in ended} == {
        ("abort",)}, ended
    assert all(s.attributes["gen_ai.usage.output_tokens"] < 40 for s in ended), ended  # of 400


def stage_samples(system: RunningSystem, stage: Stage) -> dict[str, float]:
    """Samples of a stage's histogram on each /metrics endpoint that exports it."""
    name = f"{prometheus_name(stage)}_count"
    found: dict[str, float] = {}
    for url in system.metrics_urls:
        with urllib.request.urlopen(url, timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name):
                    found[url] = found.get(url, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def test_the_kv_transfers_are_in_the_request_trace(
        running_system: RunningSystem, otlp_sink: OtlpSink) -> None:
    text = english_text()[:3500] + " (traced)"
    puts_before = sum(stage_samples(running_system, Stage.KV_PUT).values())
    gets_before = sum(stage_samples(running_system, Stage.KV_GET).values())
    trace_id = secrets.token_hex(16)
    reply = httpx.post(
        f"{running_system.router_http_url}/v1/completions", timeout=600,
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={"model": MODEL, "prompt": text, "max_tokens": 4, "ignore_eos": True,
              "temperature": 0, "user": "e2e-kv-trace"})
    assert reply.status_code == 200, reply.text
    prompt_tokens = reply.json()["usage"]["prompt_tokens"]

    prefill_call, generate_call = ("tandem.v1.PrefillService/Prefill",
                                   "tandem.v1.DecodeService/Generate")

    def transferred(spans: list[SinkSpan]) -> bool:
        names = {(s.name, s.kind == SERVER) for s in spans if s.trace_id == trace_id}
        return {(prefill_call, True), (generate_call, True), ("kvclient.put", False),
                ("kvclient.get", False)} <= names

    spans = [s for s in otlp_sink.wait_for(transferred, timeout_s=30) if s.trace_id == trace_id]
    seen = sorted((s.service, s.name, s.kind) for s in spans)
    route = next(s for s in spans if s.name == "tandem.route")
    assert route.attributes["tandem.prefill.location"] == "remote"
    prefill = next(s for s in spans if s.name == prefill_call and s.kind == SERVER)
    generate = next(s for s in spans if s.name == generate_call and s.kind == SERVER)
    assert (prefill.service, generate.service) == ("tandem-prefill", "tandem-decode"), seen
    put = [s for s in spans if s.name == "kvclient.put"]
    get = [s for s in spans if s.name == "kvclient.get"]
    # One transfer each way (one prefill chunk), from the vLLM processes that run the
    # connectors, under the workers' service names, children of the workers' server spans.
    assert len(put) == len(get) == 1, seen
    put_span, get_span = put[0], get[0]
    assert (put_span.service, put_span.parent_span_id) == ("tandem-prefill", prefill.span_id)
    assert (get_span.service, get_span.parent_span_id) == ("tandem-decode", generate.span_id)
    blocks = -(-prompt_tokens // 128)  # the prompt's whole blocks and its partial tail
    per_token = kv_bytes_per_token(default_model_dir(), system_dtype())  # bf16: 23,040
    for transfer in (put_span, get_span):
        assert transfer.attributes["tandem.kv.blocks"] == blocks
        assert transfer.attributes["tandem.kv.bytes"] == blocks * 128 * per_token
        assert transfer.attributes["tandem.kv.tier"] == "cxl"
        assert transfer.attributes["tandem.kv.transport"] == "local"  # the store is on this host
    # The store's spans, children of the client spans (a same-host put commits what the client
    # wrote into the arena); the last span of the trace may still be on its way.
    stored = {"kvstore.commit", "kvstore.get"}
    spans = [s for s in otlp_sink.wait_for(lambda got: stored <= {
        s.name for s in got if s.trace_id == trace_id}) if s.trace_id == trace_id]
    for name, client in (("kvstore.commit", put_span), ("kvstore.get", get_span)):
        served = [s for s in spans if s.name == name]
        assert {s.parent_span_id for s in served} == {client.span_id}, seen
        assert {s.service for s in served} == {"tandem-kvstore"}

    # The prefill worker recorded the put, the decode worker the get (their own /metrics),
    # each as its generation ended (the reply may reach the client a moment before).
    deadline = time.monotonic() + 10
    while True:
        puts = stage_samples(running_system, Stage.KV_PUT)
        gets = stage_samples(running_system, Stage.KV_GET)
        counts = (sum(puts.values()), sum(gets.values()))
        if (counts[0] > puts_before and counts[1] > gets_before) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts == (puts_before + 1, gets_before + 1)
    assert set(puts).isdisjoint(gets)
