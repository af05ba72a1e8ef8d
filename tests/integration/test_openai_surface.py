"""The OpenAI surface the router serves on the mock fleet, aggregated and disaggregated (a
prefill worker for every request): ``n`` choices (streamed and not), ``echo``, the completions
default of 16 tokens, the gRPC API's ``n``, and the mock engine's honest refusals of what it
cannot serve (log probabilities, logit bias, structured outputs: it has no model)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import orjson
import pytest

from tandem.errors import from_rpc_error
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import FLEETS, InProcessSystem, start_fleet

MODEL = "SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=FLEETS)
async def system(request: pytest.FixtureRequest, redis_url: str
                 ) -> AsyncIterator[InProcessSystem]:
    system = await start_fleet(redis_url, request.param)
    yield system
    await system.close()


@pytest.fixture
async def client(system: InProcessSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        yield client


def events(reply: httpx.Response) -> list[dict[str, object]]:
    blocks = [block.removeprefix("data: ") for block in reply.text.split("\n\n") if block]
    assert blocks[-1] == "[DONE]", blocks[-3:]
    return [orjson.loads(block) for block in blocks[:-1]]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_n_choices_each_with_its_index_and_usage_counting_all(
        client: httpx.AsyncClient, path: str) -> None:
    prompt = {"messages": MESSAGES} if path == CHAT else {"prompt": "Once upon a time"}
    reply = await client.post(path, json={"model": MODEL, **prompt, "n": 3, "max_tokens": 5,
                                          "ignore_eos": True, "seed": 7})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    texts = [choice["message"]["content"] if path == CHAT else choice["text"]
             for choice in body["choices"]]
    assert all(text.count(" tok") == 5 for text in texts), texts
    assert len(set(texts)) == 3  # seed + index: the choices differ
    assert body["usage"]["completion_tokens"] == 15
    assert body["usage"]["prompt_tokens"] < 40  # the prompt once, not three times


async def test_streamed_n_choices_interleave_by_index(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT, json={
        "model": MODEL, "messages": MESSAGES, "n": 3, "max_tokens": 4, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True}})
    assert reply.status_code == 200, reply.text
    chunks = events(reply)
    text: dict[int, str] = {0: "", 1: "", 2: ""}
    finished: dict[int, str] = {}
    roles = set()
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:  # type: ignore[attr-defined]
            index = choice["index"]
            delta = choice["delta"]
            roles.update([index] if delta.get("role") == "assistant" else [])
            text[index] += delta.get("content") or ""
            if choice["finish_reason"]:
                finished[index] = choice["finish_reason"]
    assert roles == {0, 1, 2}
    assert finished == {0: "length", 1: "length", 2: "length"}
    assert all(part.count(" tok") == 4 for part in text.values()), text
    assert chunks[-1]["usage"]["completion_tokens"] == 12  # type: ignore[index]


@pytest.mark.parametrize("stream", [False, True])
async def test_echo_returns_the_prompt_before_the_completion(
        client: httpx.AsyncClient, stream: bool) -> None:
    reply = await client.post(COMPLETIONS, json={
        "model": MODEL, "prompt": "Once upon a time", "echo": True, "max_tokens": 3,
        "ignore_eos": True, "stream": stream})
    assert reply.status_code == 200, reply.text
    if stream:
        text = "".join(str(c["choices"][0]["text"]) for c in events(reply))  # type: ignore[index]
    else:
        text = reply.json()["choices"][0]["text"]
    assert text.startswith("Once upon a time tok"), text
    assert text.count(" tok") == 3


async def test_echo_of_a_token_prompt_is_its_text(client: httpx.AsyncClient) -> None:
    reply = await client.post(COMPLETIONS, json={
        "model": MODEL, "prompt": [6403, 1980, 253, 655], "echo": True, "max_tokens": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"].startswith("Once upon a time")


async def test_completions_generate_16_tokens_by_default(client: httpx.AsyncClient) -> None:
    reply = await client.post(COMPLETIONS, json={
        "model": MODEL, "prompt": "Once upon a time", "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 16
    assert reply.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("extra", "param"), [
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"structured_outputs": {"regex": "[0-9]+"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     "response_format"),
])
async def test_the_mock_engine_refuses_what_it_cannot_honour(
        client: httpx.AsyncClient, extra: dict[str, object], param: str) -> None:
    """It has no model: no log probabilities, no logits, no text that could follow a
    constraint. It refuses (400 naming the parameter) rather than answer with fake ones."""
    for stream in (False, True):
        reply = await client.post(CHAT, json={"model": MODEL, "messages": MESSAGES,
                                              "max_tokens": 3, "stream": stream, **extra})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == param
        assert "mock-simulated" in reply.json()["error"]["message"]


async def test_grpc_n_choices_carry_their_index(system: InProcessSystem) -> None:
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        responses = [r async for r in stub.Complete(router_pb2.CompleteRequest(
            model=MODEL, prompt="abc", n=2,
            sampling=common_pb2.SamplingParams(max_tokens=3, ignore_eos=True)))]
    tokens = {0: 0, 1: 0}
    for response in responses:
        tokens[response.index] += len(response.delta.token_ids)
    assert tokens == {0: 3, 1: 3}
    assert sorted(r.index for r in responses if r.finish_reason) == [0, 1]


def structured(**kind: str) -> common_pb2.SamplingParams:
    sampling = common_pb2.SamplingParams(max_tokens=3)
    for name, value in kind.items():
        setattr(sampling.structured_output, name, value)
    return sampling


@pytest.mark.parametrize(("sampling", "param"), [
    (structured(json_schema="{not json"), "sampling.structured_output"),
    (structured(regex="(["), "sampling.structured_output"),
    (common_pb2.SamplingParams(logprobs=21), "sampling.logprobs"),
    (common_pb2.SamplingParams(logit_bias={10**6: 1.0}), "sampling.logit_bias"),
    (common_pb2.SamplingParams(max_tokens=2, min_tokens=3), "sampling.min_tokens"),
    (structured(json_schema='{"type": "object"}'), "response_format"),  # the mock's refusal
])
async def test_grpc_refuses_what_cannot_be_served_naming_it(
        system: InProcessSystem, sampling: common_pb2.SamplingParams, param: str) -> None:
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Complete(router_pb2.CompleteRequest(
                    model=MODEL, prompt="abc", sampling=sampling)):
                pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(refused.value).param == param
