"""The router's OpenAI HTTP API against real decode workers (mock engine) over real gRPC."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import prometheus_client
import pytest

from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=2)
    yield system
    await system.close()


@pytest.fixture
async def client(system: InProcessSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        yield client


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], **extra}


def sse_events(text: str) -> list[dict[str, object] | str]:
    events: list[dict[str, object] | str] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


async def test_models_lists_the_served_model(client: httpx.AsyncClient) -> None:
    reply = await client.get("/v1/models")
    assert reply.status_code == 200
    assert [m["id"] for m in reply.json()["data"]] == [MODEL]


async def test_chat_non_streaming_has_exact_usage(
    client: httpx.AsyncClient, system: InProcessSystem
) -> None:
    reply = await client.post(CHAT, json=chat_body(max_tokens=7))
    assert reply.status_code == 200
    body = reply.json()
    prompt_tokens = len(system.router.prompts.chat([{"role": "user", "content": "Say hello."}]))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == prompt_tokens + 7
    assert body["system_fingerprint"].startswith("mock-simulated")


async def test_stream_matches_non_stream_and_usage_arrives_last(client: httpx.AsyncClient) -> None:
    whole = (await client.post(CHAT, json=chat_body(max_tokens=6, temperature=0))).json()
    reply = await client.post(CHAT, json=chat_body(
        max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert isinstance(usage_chunk, dict)
    assert usage_chunk["choices"] == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    usage = usage_chunk["usage"]
    assert isinstance(usage, dict)
    assert {k: usage[k] for k in counts} == {k: whole["usage"][k] for k in counts}
    chunks = [e for e in events[:-2] if isinstance(e, dict)]
    assert all(chunk["usage"] is None for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_stream_without_usage(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/completions", json={
        "model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "stream": True})
    events = sse_events(reply.text)
    chunks = [e for e in events if isinstance(e, dict)]
    assert events[-1] == "[DONE]"
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # A chunk carries every token the worker had ready (the mock's tokens read " tok<id>").
    assert "".join(c["choices"][0]["text"] for c in chunks).count(" tok") == 4


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"not json", 400, None),
    (b"[1, 2]", 400, None),
    (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), 400, "model"),
    (orjson.dumps(chat_body(messages=[])), 400, "messages"),
    (orjson.dumps(chat_body(messages=[{"role": "robot", "content": "x"}])), 400,
     "messages[0].role"),
    (orjson.dumps(chat_body(max_tokens=0)), 400, "max_tokens"),
    (orjson.dumps(chat_body(max_tokens="ten")), 400, "max_tokens"),
    (orjson.dumps(chat_body(temperature=3)), 400, "temperature"),
    (orjson.dumps(chat_body(top_p=0)), 400, "top_p"),
    (orjson.dumps(chat_body(n=17)), 400, "n"),
    (orjson.dumps(chat_body(unknown_field=1)), 400, "unknown_field"),
    (orjson.dumps(chat_body(stop=[""])), 400, "stop"),
    (orjson.dumps(chat_body(stream_options={"include_usage": True})), 400, "stream_options"),
    (orjson.dumps(chat_body(max_tokens=100_000)), 400, "max_tokens"),
    (orjson.dumps(chat_body(model="gpt-17")), 404, "model"),
])
async def test_bad_input_is_a_clear_client_error(
    client: httpx.AsyncClient, body: bytes, status: int, param: str | None
) -> None:
    reply = await client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    # ... and the server keeps serving.
    assert (await client.post(CHAT, json=chat_body(max_tokens=1))).status_code == 200


async def test_context_length_error_code(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT, json=chat_body(max_tokens=5000))
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nothing", 404), ("GET", CHAT, 405), ("DELETE", "/v1/models", 405)])
async def test_unknown_routes(client: httpx.AsyncClient, method: str, path: str,
                              status: int) -> None:
    reply = await client.request(method, path)
    assert reply.status_code == status
    assert "error" in reply.json()


async def test_oversized_body_is_413(client: httpx.AsyncClient, system: InProcessSystem) -> None:
    limit = system.router.settings.max_body_bytes
    reply = await client.post(CHAT, content=b"x" * (limit + 1))
    assert reply.status_code == 413


def requests_with_outcome(outcome: str) -> float:
    """The router's request counter for one outcome, as Prometheus would scrape it."""
    return sum(sample.value for metric in prometheus_client.REGISTRY.collect()
               for sample in metric.samples
               if sample.name == "tandem_router_requests_total"
               and sample.labels.get("tandem_outcome") == outcome)


async def test_client_disconnect_aborts_the_engine_request(system: InProcessSystem) -> None:
    cancelled_before = requests_with_outcome("cancelled")
    errors_before = requests_with_outcome("error")
    max_tokens = 2000  # 2,000 mock steps of 2 ms (~4 s) if it ran to its end

    def steps() -> int:
        return sum(w.engine.steps for w in system.workers)  # type: ignore[attr-defined]

    body = chat_body(max_tokens=max_tokens, ignore_eos=True, stream=True)
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client, \
            client.stream("POST", CHAT, json=body) as reply:
        async for _ in reply.aiter_lines():
            break  # the first token arrived: generation is running
        running = sum(w.engine.load().running for w in system.workers)
        assert running == 1
        steps_at_disconnect = steps()
    # The client is gone: the decode worker must stop generating and free the slot.
    async with asyncio.timeout(30):
        while sum(w.engine.load().running for w in system.workers) != 0:
            await asyncio.sleep(0.02)
    assert steps() - steps_at_disconnect < max_tokens / 10  # aborted, not run to its end
    assert requests_with_outcome("cancelled") == cancelled_before + 1
    assert requests_with_outcome("error") == errors_before


async def test_streams_do_not_stall_on_a_keep_alive_connection(system: InProcessSystem) -> None:
    """Nagle + delayed ACK would add ~40 ms per stream on a reused connection."""
    ttfts: list[float] = []
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        for _ in range(15):
            started = time.perf_counter()
            first_token_at: float | None = None
            async with client.stream("POST", CHAT, json=chat_body(max_tokens=4, stream=True)
                                     ) as reply:
                async for line in reply.aiter_lines():
                    if first_token_at is None and '"content":" ' in line:
                        first_token_at = time.perf_counter()
            assert first_token_at is not None
            ttfts.append(first_token_at - started)
    # Mock prefill + one 2 ms decode step; a delayed-ACK stall alone would be 40 ms.
    assert statistics.median(ttfts) < 0.025, ttfts


async def test_a_stream_closed_by_its_consumer_counts_as_cancelled(
    system: InProcessSystem,
) -> None:
    from services.router.core.request import GenerationRequest
    from tandem.engines.base import Sampling

    cancelled_before = requests_with_outcome("cancelled")
    errors_before = requests_with_outcome("error")
    stream = system.router.generator.stream(GenerationRequest(
        "closed-early", MODEL, list(range(1, 40)), Sampling(max_tokens=500, ignore_eos=True)))
    await anext(stream)
    await stream.aclose()  # the consumer stops reading mid-generation
    assert requests_with_outcome("cancelled") == cancelled_before + 1
    assert requests_with_outcome("error") == errors_before
