"""Every request field of OpenAI's schema (as the official ``openai`` SDK types it), and
vLLM's extras that tandem serves, is either honoured (it changes what the router does with the
request) or refused with a 400 naming it: never accepted and ignored. The table must cover
every field the SDK knows, so a field the SDK gains fails here until it is classified."""

from __future__ import annotations

import typing
from typing import Any

import orjson
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from services.router.api.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
)
from tandem.errors import TandemError

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

REQUIRED = "required"
REFUSED = "refused"
HONOURED = "honoured"

Row = tuple[str, Any, dict[str, Any]]
"""(outcome, a value, other fields it needs)."""

SHARED: dict[str, Row] = {
    "model": (REQUIRED, None, {}),
    "frequency_penalty": (HONOURED, 0.5, {}),
    "presence_penalty": (HONOURED, 0.5, {}),
    "logit_bias": (HONOURED, {"42": 5}, {}),
    "max_tokens": (HONOURED, 5, {}),
    "n": (HONOURED, 2, {}),
    "seed": (HONOURED, 1, {}),
    "stop": (HONOURED, "x", {}),
    "stream": (HONOURED, True, {}),
    "stream_options": (HONOURED, {"include_usage": True}, {"stream": True}),
    "temperature": (HONOURED, 0.5, {}),
    "top_p": (HONOURED, 0.5, {}),
    "user": (HONOURED, "tenant-a", {}),
    # vLLM's extras
    "top_k": (HONOURED, 5, {}),
    "ignore_eos": (HONOURED, True, {}),
    "min_tokens": (HONOURED, 2, {}),
    "stop_token_ids": (HONOURED, [2], {}),
    "structured_outputs": (HONOURED, {"regex": "[0-9]+"}, {}),
}
CHAT: dict[str, Row] = SHARED | {
    "messages": (REQUIRED, None, {}),
    "max_completion_tokens": (HONOURED, 5, {}),
    "logprobs": (HONOURED, True, {}),
    "top_logprobs": (HONOURED, 3, {"logprobs": True}),
    "response_format": (HONOURED, {"type": "json_object"}, {}),
    "tools": (HONOURED, TOOLS, {"tool_choice": "required"}),
    "tool_choice": (HONOURED, {"type": "function", "function": {"name": "get_weather"}},
                    {"tools": TOOLS}),
    "parallel_tool_calls": (HONOURED, False, {"tools": TOOLS, "tool_choice": "required"}),
    "audio": (REFUSED, {"voice": "alloy", "format": "mp3"}, {}),
    "function_call": (REFUSED, "auto", {}),
    "functions": (REFUSED, [TOOLS[0]["function"]], {}),
    "metadata": (REFUSED, {"a": "b"}, {}),
    "modalities": (REFUSED, ["text", "audio"], {}),
    "moderation": (REFUSED, {"enabled": True}, {}),
    "prediction": (REFUSED, {"type": "content", "content": "x"}, {}),
    "prompt_cache_key": (REFUSED, "k", {}),
    "prompt_cache_options": (REFUSED, {"ttl": 1}, {}),
    "prompt_cache_retention": (REFUSED, "24h", {}),
    "reasoning_effort": (REFUSED, "low", {}),
    "safety_identifier": (REFUSED, "s", {}),
    "service_tier": (REFUSED, "flex", {}),
    "store": (REFUSED, True, {}),
    "verbosity": (REFUSED, "low", {}),
    "web_search_options": (REFUSED, {}, {}),
}
COMPLETION: dict[str, Row] = SHARED | {
    "prompt": (REQUIRED, None, {}),
    "echo": (HONOURED, True, {}),
    "logprobs": (HONOURED, 2, {}),
    "best_of": (REFUSED, 2, {}),
    "suffix": (REFUSED, "x", {}),
}
BASE = {
    "chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    "completion": {"model": "m", "prompt": "hi"},
}
KINDS = {"chat": ChatCompletionRequest, "completion": CompletionRequest}


def sdk_fields(module: Any) -> set[str]:
    """The request fields the SDK's create() sends (``stream`` is typed in its subclasses)."""
    names = set(typing.get_type_hints(module.CompletionCreateParamsBase))
    return names | set(typing.get_type_hints(module.CompletionCreateParamsStreaming))


def test_the_tables_cover_every_field_the_sdk_knows() -> None:
    assert sdk_fields(chat_create_params) - set(CHAT) == set()
    assert sdk_fields(completion_create_params) - set(COMPLETION) == set()


def effect(endpoint: str, body: dict[str, Any]) -> tuple[Any, ...]:
    """Everything the router does with a request, as the HTTP API reads it."""
    request = parse_request(orjson.dumps(body), KINDS[endpoint])
    shared = (request.sampling(), request.choices, request.stream, request.include_usage,
              request.user)
    if endpoint == "chat":
        return (*shared, request.conversation(), request.tool_plan(),
                request.logprobs_wanted())
    return (*shared, request.prompt_text_or_tokens(), request.echo, request.logprobs_wanted())


CASES = [(endpoint, name, row) for endpoint, table in (("chat", CHAT), ("completion", COMPLETION))
         for name, row in table.items() if row[0] != REQUIRED]


@pytest.mark.parametrize(("endpoint", "name", "row"), CASES,
                         ids=[f"{endpoint}-{name}" for endpoint, name, _ in CASES])
def test_every_field_is_honoured_or_refused_naming_it(
        endpoint: str, name: str, row: Row) -> None:
    outcome, value, needs = row
    body = BASE[endpoint] | needs | {name: value}
    if outcome == REFUSED:
        with pytest.raises(TandemError) as refused:
            effect(endpoint, body)
        assert refused.value.param == name
        return
    try:
        baseline = effect(endpoint, BASE[endpoint] | needs)
    except TandemError:  # what it needs is refused alone (tool_choice without tools)
        baseline = effect(endpoint, BASE[endpoint])
    assert effect(endpoint, body) != baseline, f"{name} was accepted and ignored"


@pytest.mark.parametrize(("endpoint", "name", "value"), [
    ("chat", "store", False), ("chat", "service_tier", "auto"), ("chat", "modalities", ["text"]),
    ("completion", "best_of", 1), ("chat", "metadata", None),
])
def test_a_refused_field_with_its_neutral_value_asks_nothing(
        endpoint: str, name: str, value: Any) -> None:
    assert effect(endpoint, BASE[endpoint] | {name: value}) == effect(endpoint, BASE[endpoint])


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_an_unknown_field_is_refused_naming_it(endpoint: str) -> None:
    with pytest.raises(TandemError) as refused:
        effect(endpoint, BASE[endpoint] | {"repetition_penalty": 1.1})
    assert refused.value.param == "repetition_penalty"


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_a_client_cannot_choose_its_cache_salt(endpoint: str) -> None:
    """vLLM's ``cache_salt`` extra: the router derives the salt from the tenant; a client that
    could set it could join another tenant's cache (README, "Tenant isolation")."""
    with pytest.raises(TandemError) as refused:
        effect(endpoint, BASE[endpoint] | {"cache_salt": "0" * 32})
    assert refused.value.param == "cache_salt"


@pytest.mark.parametrize(("endpoint", "body", "other"), [
    # tools alone (tool_choice auto): the tools reach the plan, unlike tool_choice none
    ("chat", {"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "none"}),
    ("chat", {"tools": TOOLS, "tool_choice": "auto"}, {"tools": TOOLS, "tool_choice": "none"}),
    # echo with logprobs: the prompt's log probabilities too
    ("completion", {"echo": True, "logprobs": 1}, {"logprobs": 1}),
])
def test_values_of_a_field_that_ask_different_things_differ(
        endpoint: str, body: dict[str, Any], other: dict[str, Any]) -> None:
    assert effect(endpoint, BASE[endpoint] | body) != effect(endpoint, BASE[endpoint] | other)
