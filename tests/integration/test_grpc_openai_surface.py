"""The gRPC RouterService offers what the HTTP API offers beyond text, on the mock fleet
(aggregated and disaggregated): completions' ``echo`` (with the prompt's log probabilities
asked, the mock's honest refusal), tools — ``auto`` read by vLLM's parser (the mock writes
prose: content, finish STOP), a named or required call's constraint reaching the worker (the
mock refuses it: it has no model), ``none`` — and the refusals naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from tandem.errors import from_rpc_error
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import FLEETS, InProcessSystem, start_fleet
from tests.integration.test_openai_surface import MODEL

WEATHER = router_pb2.Tool(
    name="get_weather", description="Get the current weather in a city",
    parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}')
MESSAGES = [router_pb2.ChatMessage(role="user", content="What is the weather in Paris?")]


@pytest.fixture(scope="module", params=FLEETS)
async def system(request: pytest.FixtureRequest, redis_url: str
                 ) -> AsyncIterator[InProcessSystem]:
    """The fleets of test_openai_surface (a module-scoped fixture is not shared by import)."""
    system = await start_fleet(redis_url, request.param)
    yield system
    await system.close()


@pytest.fixture
async def stub(system: InProcessSystem) -> AsyncIterator[router_pb2_grpc.RouterServiceStub]:
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


async def test_echo_leads_each_choices_first_message_with_the_prompt(
        stub: router_pb2_grpc.RouterServiceStub) -> None:
    responses = [r async for r in stub.Complete(router_pb2.CompleteRequest(
        model=MODEL, prompt="Once upon a time", n=2, echo=True,
        sampling=common_pb2.SamplingParams(max_tokens=3, ignore_eos=True)))]
    for index in (0, 1):
        texts = [r.delta.text for r in responses if r.index == index]
        assert texts[0].startswith("Once upon a time")
        assert "".join(texts).count("Once upon a time") == 1


async def test_without_echo_the_prompt_is_not_repeated(
        stub: router_pb2_grpc.RouterServiceStub) -> None:
    responses = [r async for r in stub.Complete(router_pb2.CompleteRequest(
        model=MODEL, prompt="Once upon a time",
        sampling=common_pb2.SamplingParams(max_tokens=3, ignore_eos=True)))]
    assert "Once upon a time" not in "".join(r.delta.text for r in responses)


async def test_auto_reads_the_mocks_prose_as_content(
        stub: router_pb2_grpc.RouterServiceStub) -> None:
    responses = [r async for r in stub.Chat(router_pb2.ChatRequest(
        model=MODEL, messages=MESSAGES, tools=[WEATHER],
        sampling=common_pb2.SamplingParams(max_tokens=4, ignore_eos=True)))]
    assert "".join(r.delta.text for r in responses)
    assert not [call for r in responses for call in r.tool_calls]
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize("choice", [
    router_pb2.ToolChoice(function="get_weather"), router_pb2.ToolChoice(mode="required")])
async def test_a_forced_call_reaches_the_worker_as_a_constraint(
        stub: router_pb2_grpc.RouterServiceStub, choice: router_pb2.ToolChoice) -> None:
    """The mock has no model to follow a schema: it refuses, naming response_format."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Chat(router_pb2.ChatRequest(
                model=MODEL, messages=MESSAGES, tools=[WEATHER], tool_choice=choice,
                sampling=common_pb2.SamplingParams(max_tokens=4))):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(refused.value).param == "response_format"


async def test_none_answers_in_text(stub: router_pb2_grpc.RouterServiceStub) -> None:
    responses = [r async for r in stub.Chat(router_pb2.ChatRequest(
        model=MODEL, messages=MESSAGES, tools=[WEATHER],
        tool_choice=router_pb2.ToolChoice(mode="none"),
        sampling=common_pb2.SamplingParams(max_tokens=2, ignore_eos=True)))]
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


@pytest.mark.parametrize(("request_", "param"), [
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES,
                            tool_choice=router_pb2.ToolChoice(mode="required")), "tool_choice"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, tools=[WEATHER],
                            tool_choice=router_pb2.ToolChoice(mode="sometimes")), "tool_choice"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, tools=[WEATHER],
                            tool_choice=router_pb2.ToolChoice(function="nope")), "tool_choice"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, tools=[router_pb2.Tool(
        name="f", parameters_json="{not json")]), "tools"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, tools=[router_pb2.Tool(
        name="bad name")]), "tools.function.name"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, parallel_tool_calls=False),
     "parallel_tool_calls"),
    (router_pb2.ChatRequest(model=MODEL, messages=MESSAGES, tools=[WEATHER],
                            tool_choice=router_pb2.ToolChoice(function="get_weather"),
                            sampling=common_pb2.SamplingParams(structured_output=(
                                common_pb2.StructuredOutput(json_object=True)))),
     "tool_choice"),
])
async def test_tools_that_cannot_be_served_are_refused_naming_the_field(
        stub: router_pb2_grpc.RouterServiceStub, request_: router_pb2.ChatRequest,
        param: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Chat(request_):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(refused.value).param == param


async def test_echo_with_the_prompts_logprobs_is_the_mocks_honest_refusal(
        stub: router_pb2_grpc.RouterServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stub.Complete(router_pb2.CompleteRequest(
                model=MODEL, prompt="abc", echo=True,
                sampling=common_pb2.SamplingParams(max_tokens=2, prompt_logprobs=1))):
            pass
    assert from_rpc_error(refused.value).param == "logprobs"
