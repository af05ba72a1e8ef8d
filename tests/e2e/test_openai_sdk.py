"""The OpenAI API through the official SDK against the real system (router → decode on vLLM)."""

from __future__ import annotations

import asyncio

import grpc
import openai
import pytest

from tandem.v1 import worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import MODEL, RunningSystem


@pytest.fixture(scope="module")
def client(running_system: RunningSystem) -> openai.OpenAI:
    return openai.OpenAI(base_url=running_system.openai_base_url, api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                           max_tokens=32, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint is not None and reply.system_fingerprint.startswith("vllm")


def test_chat_streaming_with_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                           max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None and whole.usage is not None
    assert usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Count: one, two, three,",
                                      max_tokens=5, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_completions_streaming(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="The sky is", max_tokens=8,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_sequence_ends_generation_without_the_stop_text(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="Count: one, two, three,",
                                     max_tokens=20, temperature=0)
    text = free.choices[0].text
    assert "," in text, text
    stop = text[text.index(","):text.index(",") + 1]
    stopped = client.completions.create(model=MODEL, prompt="Count: one, two, three,",
                                        max_tokens=20, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(",")]


def test_bad_input_is_400_and_the_server_keeps_serving(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                       temperature=9)
    assert raised.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                       max_tokens=10**6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES,  # type: ignore[arg-type]
                                          max_tokens=2).choices[0].message.content


async def test_disconnect_frees_the_decode_slot(running_system: RunningSystem) -> None:
    import redis.asyncio as aioredis

    from tandem.discovery import WorkerWatcher

    redis = aioredis.Redis.from_url(running_system.redis_url)
    namespace = next(k.decode().split(":")[0] for k in await redis.keys("*:workers"))
    watcher = WorkerWatcher(redis, namespace)
    await watcher.refresh()
    decode = watcher.of_role("decode")[0]  # the prefill worker is registered too
    await redis.aclose()
    client = openai.AsyncOpenAI(base_url=running_system.openai_base_url, api_key="unused")
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2000, stream=True,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True})
    async for _ in stream:
        break
    async with grpc.aio.insecure_channel(decode.address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        load = await stub.GetLoad(worker_pb2.GetLoadRequest())
        assert load.running_requests + load.waiting_requests == 1
        await stream.close()  # the client goes away mid-generation
        async with asyncio.timeout(10):
            while True:
                load = await stub.GetLoad(worker_pb2.GetLoadRequest())
                if load.running_requests + load.waiting_requests == 0:
                    break
                await asyncio.sleep(0.1)
    await client.close()
