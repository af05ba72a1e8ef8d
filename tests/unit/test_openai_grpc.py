"""The gRPC RouterService's tools and echo (``openai_grpc``): requests read into the HTTP
API's plans, each delta into its response's fields. Pure, no I/O."""

from __future__ import annotations

import orjson
import pytest

from services.router.api.openai_grpc import ResponseFields, conversation, tool_plan
from services.router.core.request import Delta
from tandem.errors import TandemError
from tandem.v1 import common_pb2, router_pb2

WEATHER = router_pb2.Tool(
    name="get_weather",
    parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}')
USER = router_pb2.ChatMessage(role="user", content="Weather in Paris?")


def chat(**fields: object) -> router_pb2.ChatRequest:
    return router_pb2.ChatRequest(model="m", messages=[USER], **fields)  # type: ignore[arg-type]


def piece(text: str, finish: str | None = None) -> Delta:
    return Delta(text=text, token_ids=[1], finish_reason=finish,
                 prompt_tokens=5 if finish else 0, completion_tokens=2 if finish else 0)


@pytest.mark.parametrize(("request_", "named", "auto"), [
    (chat(tools=[WEATHER]), None, True),  # unset with tools: auto
    (chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(mode="auto")), None, True),
    (chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(mode="required")), None, False),
    (chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(function="get_weather")),
     "get_weather", False),
])
def test_the_tools_are_planned_as_over_http(request_: router_pb2.ChatRequest,
                                            named: str | None, auto: bool) -> None:
    plan = tool_plan(request_)
    assert plan is not None and plan.named == named and plan.auto == auto
    if plan.constraint is not None:  # the function's schema reaches the constraint
        assert "city" in str(plan.constraint.value)


def test_none_and_no_tools_answer_in_text() -> None:
    assert tool_plan(chat()) is None
    assert tool_plan(chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(mode="none"))) \
        is None
    with pytest.raises(TandemError):
        tool_plan(chat(tool_choice=router_pb2.ToolChoice(mode="auto")))


def test_a_named_calls_arguments_stream_as_call_pieces() -> None:
    plan = tool_plan(chat(tools=[WEATHER],
                          tool_choice=router_pb2.ToolChoice(function="get_weather")))
    shaper = ResponseFields(1, plan, None)
    sent = [router_pb2.ChatResponse(**shaper.fields(0, d, "r"))  # type: ignore[arg-type]
            for d in (piece('{"city"'), piece(': "Paris"}', "stop"))]
    calls = [call for response in sent for call in response.tool_calls]
    assert calls[0].id and calls[0].name == "get_weather"
    assert [call.name for call in calls[1:]] == [""]
    assert orjson.loads("".join(call.arguments for call in calls)) == {"city": "Paris"}
    assert [r.delta.text for r in sent] == ["", ""]  # the arguments are no content
    assert sent[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS


def test_required_calls_stream_their_name_then_their_arguments() -> None:
    plan = tool_plan(chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(mode="required")))
    shaper = ResponseFields(1, plan, None)
    first = router_pb2.ChatResponse(**shaper.fields(0, piece('[{"name": "get_weather", '), "r"))  # type: ignore[arg-type]
    last = router_pb2.ChatResponse(**shaper.fields(  # type: ignore[arg-type]
        0, piece('"parameters": {"city": "Rome"}}]', "stop"), "r"))
    (named,) = first.tool_calls
    assert named.id and named.name == "get_weather" and not named.arguments
    (call,) = last.tool_calls
    assert not call.name and orjson.loads(call.arguments) == {"city": "Rome"}
    assert last.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS


def test_an_assistants_calls_are_rendered_for_the_template() -> None:
    request = chat(tools=[WEATHER], tool_choice=router_pb2.ToolChoice(mode="none"))
    request.messages.append(router_pb2.ChatMessage(role="assistant", tool_calls=[
        router_pb2.ToolCall(id="c1", name="get_weather", arguments='{"city": "Rome"}')]))
    assert conversation(request, tool_plan(request))[-1] == {
        "role": "assistant", "content": '[{"name":"get_weather","parameters":{"city":"Rome"}}]'}
    auto = chat(tools=[WEATHER])
    auto.messages.extend(request.messages[1:])
    assert conversation(auto, tool_plan(auto))[-1]["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]


def test_echo_leads_each_choices_first_message_only() -> None:
    shaper = ResponseFields(2, None, None, "Once")
    texts = [shaper.fields(i, piece(t), "r")["delta"].text  # type: ignore[attr-defined]
             for i, t in ((0, " a"), (1, " b"), (0, " c"))]
    assert texts == ["Once a", "Once b", " c"]
