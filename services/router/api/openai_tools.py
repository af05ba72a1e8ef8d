"""OpenAI tools (function calling) through structured outputs: a named function or
``tool_choice: "required"`` becomes a JSON Schema constraint on the model's output, which is
then read back as ``tool_calls``. Works with any model, whatever its chat template.

``tool_choice: "auto"`` (the default when tools are given) leaves the choice to the model: its
prompt renders the tools with a tools-aware chat template and vLLM's tool-call parser reads the
calls it writes (``openai_auto_tools``); where the router has none for its model, ``auto`` is
refused with a 400 naming ``tool_choice``."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from tandem.engines.base import StructuredOutput
from tandem.errors import invalid

ToolCall = dict[str, Any]


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    """Honoured by construction: the arguments always follow ``parameters``."""


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


@dataclasses.dataclass(frozen=True)
class ToolPlan:
    """How a request's tools are served: the constraint on its output and how to read it."""

    named: str | None
    """The forced function (its output is the arguments object); None: ``required`` (its
    output is a JSON array of ``{"name", "parameters"}``) or ``auto``."""
    constraint: StructuredOutput | None
    """None: ``auto`` (free text, read by the tool-call parser)."""
    tools: tuple[dict[str, Any], ...] = ()
    """``auto``: the tools as OpenAI's JSON (rendered into the prompt, given to the parser)."""

    @property
    def auto(self) -> bool:
        return self.constraint is None


def plan_tools(tools: list[Tool] | None, choice: ToolChoice | None,
               parallel: bool | None) -> ToolPlan | None:
    """The plan of a request's tools; None when the model answers in text (no tools, or
    ``tool_choice: "none"``). Raises the 400 of a choice that cannot be served."""
    if choice is not None and not tools:
        raise invalid("tool_choice is only allowed when tools are given", "tool_choice")
    if not tools or choice == "none":
        return None
    if choice is None or choice == "auto":
        return ToolPlan(None, None, tuple(tool.model_dump(exclude_none=True) for tool in tools))
    functions = {tool.function.name: tool.function for tool in tools}
    if isinstance(choice, NamedToolChoice):
        function = functions.get(choice.function.name)
        if function is None:
            raise invalid(f"tool_choice names {choice.function.name!r}, which is not among "
                          "the tools", "tool_choice")
        return ToolPlan(function.name, _schema(_parameters(function)))
    calls = {"type": "object", "anyOf": [
        {"properties": {"name": {"type": "string", "enum": [name]},
                        "parameters": _parameters(function)},
         "required": ["name", "parameters"]} for name, function in functions.items()]}
    array: dict[str, Any] = {"type": "array", "minItems": 1, "items": calls}
    if parallel is False:
        array["maxItems"] = 1
    return ToolPlan(None, _schema(array))


def _parameters(function: FunctionDefinition) -> dict[str, Any]:
    return function.parameters or {"type": "object", "properties": {}}


def _schema(schema: dict[str, Any]) -> StructuredOutput:
    return StructuredOutput("json_schema", orjson.dumps(schema).decode())


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def read_calls(plan: ToolPlan, text: str) -> list[ToolCall] | None:
    """The tool calls in a finished output (OpenAI's ``tool_calls``); None when the output is
    no complete call (it was cut by max_tokens): the text is then answered as content."""
    if plan.named is not None:
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return [_call(plan.named, text)]
    try:
        calls = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(calls, list):
        return None
    return [_call(str(call["name"]), orjson.dumps(call["parameters"]).decode())
            for call in calls if isinstance(call, dict) and "name" in call]


def _call(name: str, arguments: str) -> ToolCall:
    return {"id": call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def render_calls(calls: list[dict[str, Any]]) -> str:
    """An assistant message's earlier tool calls as the text the model wrote for them (its
    chat template has no place for them): the calls' JSON."""
    rendered = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parameters = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parameters = arguments
        rendered.append({"name": function.get("name"), "parameters": parameters})
    return orjson.dumps(rendered).decode()


def partial_calls(text: str) -> list[tuple[str | None, str]]:
    """``required``'s calls as far as ``text`` (a prefix of a JSON array of ``{"name",
    "parameters"}``) has them: (the name once its string closed, the parameters' JSON so far)
    per call. The output follows the array's schema, so a scan of depths and strings finds
    them without a JSON parser of partial text."""
    calls: list[tuple[str | None, str]] = []
    depth, in_string, escape = 0, False, False
    key: str | None = None
    string_start = 0
    last_string = ""
    value_start = -1  # where the current call's parameters begin (-1: not yet)
    for position, char in enumerate(text):
        if in_string:
            if escape:
                escape = False
            elif char == "\\":
                escape = True
            elif char == '"':
                in_string = False
                last_string = text[string_start:position]
                if depth == 2 and key == "name" and calls and calls[-1][0] is None:
                    try:
                        calls[-1] = (orjson.loads(f'"{last_string}"'), "")
                    except orjson.JSONDecodeError:
                        calls[-1] = (last_string, "")
            continue
        if char == '"':
            in_string, string_start = True, position + 1
        elif char == ":" and depth == 2:
            key = last_string
            if key == "parameters":
                value_start = position + 1
        elif char in "{[":
            depth += 1
            if depth == 2 and char == "{":
                calls.append((None, ""))
                key, value_start = None, -1
        elif char in "}]":
            depth -= 1
            if depth == 1 and value_start >= 0 and calls:
                calls[-1] = (calls[-1][0], text[value_start:position].strip())
                value_start = -1
        elif char == "," and depth == 2:
            if value_start >= 0 and key == "parameters" and calls:
                calls[-1] = (calls[-1][0], text[value_start:position].strip())
                value_start = -1
            key = None
    if value_start >= 0 and calls:  # the parameters still streaming
        calls[-1] = (calls[-1][0], text[value_start:].lstrip())
    return calls
