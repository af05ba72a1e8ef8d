"""What the HTTP API offers beyond text, for the gRPC RouterService: tools (``none``, ``auto``,
``required``, a named function: the same plans as ``openai_tools``/``openai_auto_tools``) and
completions' ``echo``. Requests are read from their messages into the HTTP API's own types;
each delta of a choice becomes the fields of its response message."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from pydantic import ValidationError

from services.router.api.openai_auto_tools import AutoTools, ToolReaders
from services.router.api.openai_choices import Choices, Shape
from services.router.api.openai_tools import (
    NamedToolChoice,
    Tool,
    ToolChoice,
    ToolPlan,
    plan_tools,
)
from services.router.api.sampling_schema import refusal
from services.router.core.request import Delta
from tandem.engines.base import Sampling
from tandem.errors import invalid
from tandem.protocol import FINISH_TO_PROTO
from tandem.v1 import common_pb2, router_pb2

FINISH = {**FINISH_TO_PROTO, "tool_calls": common_pb2.FINISH_REASON_TOOL_CALLS}


def tool_plan(request: router_pb2.ChatRequest) -> ToolPlan | None:
    """The request's tools as the HTTP API plans them (None: text); a 400 naming the field
    for what cannot be served."""
    try:
        tools = [Tool.model_validate({"type": "function", "function": {
            "name": tool.name, "description": tool.description or None,
            "parameters": orjson.loads(tool.parameters_json) if tool.parameters_json
            else None}}) for tool in request.tools]
    except orjson.JSONDecodeError as error:
        raise invalid(f"tools: parameters_json is not JSON: {error}", "tools") from None
    except ValidationError as error:
        raise refusal(error, "tools.") from None
    kind = request.tool_choice.WhichOneof("choice")
    choice: ToolChoice | None = None
    if kind == "function":
        choice = NamedToolChoice.model_validate(
            {"type": "function", "function": {"name": request.tool_choice.function}})
    elif kind == "mode":
        if request.tool_choice.mode not in ("none", "auto", "required"):
            raise invalid(f"tool_choice.mode must be none, auto or required, not "
                          f"{request.tool_choice.mode!r}", "tool_choice")
        choice = request.tool_choice.mode  # type: ignore[assignment]
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    if parallel is not None and not tools:
        raise invalid("parallel_tool_calls is only allowed when tools are given",
                      "parallel_tool_calls")
    return plan_tools(tools or None, choice, parallel)


def constrained(sampling: Sampling, plan: ToolPlan | None) -> Sampling:
    """The sampling with a required or named call's constraint."""
    if plan is None or plan.constraint is None:
        return sampling
    if sampling.structured_output is not None:
        raise invalid("sampling.structured_output and tool_choice each constrain the output: "
                      "give one", "tool_choice")
    return dataclasses.replace(sampling, structured_output=plan.constraint)


def conversation(request: router_pb2.ChatRequest, plan: ToolPlan | None
                 ) -> list[dict[str, Any]]:
    """The messages for the chat template (an assistant's calls kept as ``tool_calls`` for
    ``auto``'s tools-aware template, else their JSON as the text the model wrote)."""
    auto = plan is not None and plan.auto
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        calls: list[dict[str, Any]] = [{"type": "function", "function": {
            "name": call.name, "arguments": _arguments(call.arguments)}}
            for call in message.tool_calls]
        role = "system" if message.role == "developer" else message.role
        if auto:
            messages.append({"role": role, "content": message.content, "tool_calls": calls})
        elif calls and not message.content:
            messages.append({"role": role, "content": orjson.dumps([
                {"name": c["function"]["name"], "parameters": c["function"]["arguments"]}
                for c in calls]).decode()})
        else:
            messages.append({"role": role, "content": message.content})
    return messages


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return text


class ResponseFields:
    """The fields of each response message of one call: the tool calls read from a chat
    choice's output, a completion's echoed prompt."""

    def __init__(self, n: int, plan: ToolPlan | None, readers: ToolReaders | None,
                 echo: str = "") -> None:
        self.choices = Choices(Shape(chat=True, tools=plan, auto=readers), n) \
            if plan is not None else None
        self.echo = echo
        self.started: set[int] = set()

    def fields(self, index: int, delta: Delta, request_id: str) -> dict[str, object]:
        text, finish = delta.text, delta.finish_reason
        calls: list[router_pb2.ToolCallDelta] = []
        if self.choices is not None:
            content, finish = self.choices.tool_delta(index, text, finish)
            text = content.get("content", "")
            calls = [router_pb2.ToolCallDelta(
                index=call["index"], id=call.get("id", ""),
                name=call["function"].get("name", ""),
                arguments=call["function"].get("arguments", ""))
                for call in content.get("tool_calls", ())]
        if self.echo and index not in self.started:
            text = self.echo + text
        self.started.add(index)
        fields: dict[str, object] = {
            "delta": common_pb2.TokenDelta(token_ids=delta.token_ids, text=text,
                                           logprobs=delta.logprobs,
                                           prompt_logprobs=delta.prompt_logprobs),
            "request_id": request_id, "engine": delta.engine, "index": index}
        if calls:
            fields["tool_calls"] = calls
        if finish is not None:
            fields["finish_reason"] = FINISH[finish]
            fields["usage"] = common_pb2.Usage(
                prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens,
                cached_tokens=delta.cached_tokens)
        return fields


async def readers_for(plan: ToolPlan | None, auto_tools: AutoTools | None
                      ) -> ToolReaders | None:
    """vLLM's parser for an ``auto`` plan (a 400 where the router has none)."""
    if plan is None or not plan.auto:
        return None
    if auto_tools is None:
        raise invalid("tool_choice 'auto' is not served here", "tool_choice")
    return await auto_tools.readers(plan.tools)
