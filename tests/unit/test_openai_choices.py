"""The choices of an OpenAI response from their deltas (``openai_choices``), tools as
structured outputs (``openai_tools``) and the requests of n choices (``fanout``):
table-driven, no I/O."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orjson
import pytest

from services.router.api.openai_choices import Choices, Shape
from services.router.api.openai_format import ChunkWriter
from services.router.api.openai_tools import (
    FunctionDefinition,
    NamedToolChoice,
    Tool,
    plan_tools,
    read_calls,
)
from services.router.core.request import Delta, GenerationRequest
from services.router.fanout import INT64_MAX, choice_requests
from tandem.engines.base import Sampling
from tandem.errors import TandemError
from tandem.v1 import common_pb2

WEATHER = Tool(type="function", function=FunctionDefinition(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}))
CLOCK = Tool(type="function", function=FunctionDefinition(name="get_time"))


def lp(token: str, logprob: float, *top: tuple[str, float]) -> common_pb2.TokenLogprobs:
    return common_pb2.TokenLogprobs(
        sampled=common_pb2.Logprob(token=token, logprob=logprob),
        top=[common_pb2.Logprob(token=t, logprob=v) for t, v in top])


def delta(text: str, finish: str | None = None, completion: int = 0,
          logprobs: tuple[common_pb2.TokenLogprobs, ...] = ()) -> Delta:
    return Delta(text=text, token_ids=[1] * max(1, len(logprobs)), finish_reason=finish,
                 prompt_tokens=7 if finish else 0, completion_tokens=completion,
                 cached_tokens=3 if finish else 0, engine="vllm-test", logprobs=logprobs)


def whole(choices: Choices) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(choices.response("id-1", "m", 0))
    return body


def chunks(choices: Choices, deltas: list[tuple[int, Delta]]) -> list[dict[str, Any]]:
    writer = ChunkWriter(choices.shape.chat, "id-1", "m", 0)
    body = b"".join(choices.chunk(writer, index, d) for index, d in deltas)
    return [orjson.loads(block.removeprefix(b"data: ")) for block in body.split(b"\n\n")
            if block]


def test_n_choices_answer_each_and_count_every_completion_token() -> None:
    choices = Choices(Shape(chat=True), 2)
    choices.add(1, delta("b", "length", 4))
    choices.add(0, delta("a", "stop", 2))
    body = whole(choices)
    assert [(c["index"], c["message"]["content"], c["finish_reason"])
            for c in body["choices"]] == [(0, "a", "stop"), (1, "b", "length")]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13,
                             "prompt_tokens_details": {"cached_tokens": 3}}


def test_chat_logprobs_are_openais_shape() -> None:
    choices = Choices(Shape(chat=True, logprobs=True), 1)
    choices.add(0, delta("Hi", None, 0, (lp("Hi", -0.5, ("Hi", -0.5), ("Yo", float("-inf"))),)))
    choices.add(0, delta("!", "stop", 2, (lp("!", -1.0),)))
    content = whole(choices)["choices"][0]["logprobs"]["content"]
    assert content == [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -9999.0, "bytes": [89, 111]}]},
        {"token": "!", "logprob": -1.0, "bytes": [33], "top_logprobs": []}]


def test_completion_logprobs_and_echo() -> None:
    choices = Choices(Shape(chat=False, logprobs=True, echo="Say"), 1)
    choices.add(0, delta(" a b", "length", 2, (lp(" a", -0.1, (" a", -0.1)),
                                                 lp(" b", -0.2, (" c", -0.05)))))
    choice = whole(choices)["choices"][0]
    assert choice["text"] == "Say a b"
    assert choice["logprobs"] == {"tokens": [" a", " b"], "token_logprobs": [-0.1, -0.2],
                                  "top_logprobs": [{" a": -0.1}, {" c": -0.05}],
                                  "text_offset": [3, 5]}


PROMPT_LOGPROBS = (lp(" upon", -2.0, (" upon", -2.0)), lp(" a", -0.5, (" a", -0.5)))


def test_echo_with_logprobs_leads_with_the_prompts_the_first_token_null() -> None:
    choices = Choices(Shape(chat=False, logprobs=True, echo="Once upon a",
                            echo_first="Once"), 1)
    choices.add(0, dataclasses.replace(
        delta(" time", "length", 1, (lp(" time", -0.1, (" time", -0.1)),)),
        prompt_logprobs=PROMPT_LOGPROBS))
    choice = whole(choices)["choices"][0]
    assert choice["text"] == "Once upon a time"
    assert choice["logprobs"] == {
        "tokens": ["Once", " upon", " a", " time"],
        "token_logprobs": [None, -2.0, -0.5, -0.1],
        "top_logprobs": [None, {" upon": -2.0}, {" a": -0.5}, {" time": -0.1}],
        "text_offset": [0, 4, 9, 11]}


def test_a_streamed_echo_waits_for_the_prompts_logprobs() -> None:
    """A remote prefill's first token reaches the router before the decode worker computed
    the prompt's log probabilities: the echo's chunk waits for them and carries them."""
    choices = Choices(Shape(chat=False, logprobs=True, echo="Once upon a",
                            echo_first="Once"), 1)
    sent = chunks(choices, [
        (0, delta(" time", None, 0, (lp(" time", -0.1),))),
        (0, dataclasses.replace(delta(",", None, 0, (lp(",", -0.3),)),
                                prompt_logprobs=PROMPT_LOGPROBS)),
        (0, delta(" there", "length", 3, (lp(" there", -0.2),)))])
    assert len(sent) == 2
    first = sent[0]["choices"][0]
    assert first["text"] == "Once upon a time,"
    assert first["logprobs"]["tokens"] == ["Once", " upon", " a", " time", ","]
    assert first["logprobs"]["token_logprobs"] == [None, -2.0, -0.5, -0.1, -0.3]
    assert sent[1]["choices"][0]["logprobs"]["tokens"] == [" there"]


def test_a_streamed_echo_leads_the_first_chunk() -> None:
    choices = Choices(Shape(chat=False, echo="Say"), 1)
    sent = chunks(choices, [(0, delta(" a")), (0, delta(" b", "length", 2))])
    assert "".join(c["choices"][0]["text"] for c in sent) == "Say a b"


def test_streamed_choices_open_with_their_role() -> None:
    choices = Choices(Shape(chat=True), 2)
    sent = chunks(choices, [(1, delta("x")), (0, delta("y")), (1, delta("", "stop", 1))])
    deltas = [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in sent]
    assert deltas == [(1, {"role": "assistant", "content": ""}), (1, {"content": "x"}),
                      (0, {"content": "y"}), (1, {})]
    assert sent[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_named_tool_call_streams_its_arguments() -> None:
    plan = plan_tools([WEATHER], NamedToolChoice.model_validate(
        {"type": "function", "function": {"name": "get_weather"}}), None)
    assert plan is not None and plan.named == "get_weather"
    assert json.loads(str(plan.constraint.value)) == WEATHER.function.parameters
    choices = Choices(Shape(chat=True, tools=plan), 1)
    sent = chunks(choices, [(0, delta('{"city"')), (0, delta(': "Paris"}', "stop", 5))])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in sent]
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(call["function"]["arguments"] for call in calls) == '{"city": "Paris"}'
    assert sent[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_required_tool_calls_are_read_from_the_whole_output() -> None:
    plan = plan_tools([WEATHER, CLOCK], "required", None)
    assert plan is not None and plan.named is None
    schema = json.loads(str(plan.constraint.value))
    assert schema["minItems"] == 1 and "maxItems" not in schema
    output = '[{"name": "get_time", "parameters": {}}, ' \
             '{"name": "get_weather", "parameters": {"city": "Oslo"}}]'
    choices = Choices(Shape(chat=True, tools=plan), 1)
    choices.add(0, delta(output, "stop", 20))
    choice = whole(choices)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in choice["message"]["tool_calls"]] == [
        ("get_time", {}), ("get_weather", {"city": "Oslo"})]


@pytest.mark.parametrize("size", [1, 3, 10, 1000])
def test_required_tool_calls_stream_as_they_are_generated(size: int) -> None:
    """Each call's first piece names it as soon as its name is complete; its arguments
    follow in fragments as the model writes them, not when the choice ends."""
    plan = plan_tools([WEATHER, CLOCK], "required", None)
    output = '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", ' \
             '"parameters": {"city": "O\\"s,lo}"}}]'
    parts = [output[i:i + size] for i in range(0, len(output), size)]
    streamed = Choices(Shape(chat=True, tools=plan), 1)
    sent = chunks(streamed, [(0, delta(part, "stop" if i == len(parts) - 1 else None, 20))
                             for i, part in enumerate(parts)])
    pieces = [call for c in sent for call in c["choices"][0]["delta"].get("tool_calls", [])]
    firsts = [call for call in pieces if "id" in call]
    assert [(c["index"], c["function"]["name"]) for c in firsts] == [
        (0, "get_time"), (1, "get_weather")]
    arguments = ["".join(c["function"]["arguments"] for c in pieces if c["index"] == i)
                 for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{}, {"city": 'O"s,lo}'}]
    assert sent[-1]["choices"][0]["finish_reason"] == "tool_calls"
    if size <= 10:  # the first call went out before the second was written
        assert len([c for c in sent if c["choices"][0]["delta"].get("tool_calls")]) > 2


def test_a_cut_tool_call_is_answered_as_text() -> None:
    plan = plan_tools([WEATHER], "required", False)
    assert plan is not None and json.loads(str(plan.constraint.value))["maxItems"] == 1
    assert read_calls(plan, '[{"name": "get_weather", "param') is None
    choices = Choices(Shape(chat=True, tools=plan), 1)
    choices.add(0, delta('[{"name"', "length", 40))
    choice = whole(choices)["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": '[{"name"'}
    assert choice["finish_reason"] == "length"


@pytest.mark.parametrize(("tools", "choice", "param"), [
    (None, "required", "tool_choice"),
    ([WEATHER], NamedToolChoice.model_validate(
        {"type": "function", "function": {"name": "nope"}}), "tool_choice"),
])
def test_tool_choices_that_cannot_be_served_are_refused(
        tools: list[Tool] | None, choice: Any, param: str) -> None:
    with pytest.raises(TandemError) as refused:
        plan_tools(tools, choice, None)
    assert refused.value.param == param


def test_none_answers_in_text() -> None:
    assert plan_tools([WEATHER], "none", None) is None


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_leaves_the_output_free_and_carries_the_tools(choice: Any) -> None:
    plan = plan_tools([WEATHER], choice, None)
    assert plan is not None and plan.auto and plan.constraint is None
    assert plan.tools == (WEATHER.model_dump(exclude_none=True),)


@pytest.mark.parametrize(("seed", "n", "seeds"), [
    (None, 3, [None, None, None]),
    (5, 3, [5, 6, 7]),
    (INT64_MAX, 2, [INT64_MAX, INT64_MAX - 1]),
])
def test_choices_run_as_requests_of_their_own(seed: int | None, n: int,
                                              seeds: list[int | None]) -> None:
    request = GenerationRequest("r", "m", [1, 2], Sampling(seed=seed, max_tokens=3))
    requests = choice_requests(request, n)
    assert [r.request_id for r in requests] == [f"r-{i}" for i in range(n)]
    assert [r.sampling.seed for r in requests] == seeds
    assert all(r.sampling.max_tokens == 3 and r.prompt_token_ids == [1, 2] for r in requests)
    assert choice_requests(request, 1) == [request]
