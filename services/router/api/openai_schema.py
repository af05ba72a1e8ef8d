"""OpenAI API requests: validation into engine-neutral parameters.

Every parameter is honoured or refused with a 400 naming it, never accepted and ignored: an
invalid value, a field of OpenAI's schema that tandem does not serve (``UNSERVED``: unless it
carries its neutral value) and an unknown field alike (OpenAI answers "Unrecognized request
argument" too).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.router.api.openai_tools import (
    Tool,
    ToolChoice,
    ToolPlan,
    plan_tools,
    render_calls,
)
from services.router.api.sampling_schema import (
    MAX_CHOICES,
    MAX_LOGPROBS,
    SamplingFields,
    check_structured,
    refusal,
)
from tandem.engines.base import Sampling, StructuredOutput
from tandem.errors import TandemError, invalid
from tandem.v1 import common_pb2

COMPLETIONS_MAX_TOKENS = 16
"""max_tokens of /v1/completions when the request sets none (OpenAI's and vLLM's default)."""

UNSERVED: dict[str, dict[str, tuple[object, ...]]] = {
    "chat": {name: () for name in (
        "audio", "function_call", "functions", "metadata", "moderation", "prediction",
        "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
        "reasoning_effort", "safety_identifier", "verbosity", "web_search_options")}
    | {"store": (False,), "service_tier": ("auto", "default"), "modalities": (["text"],)},
    "completion": {"suffix": (), "best_of": (1,)},
}
"""Fields of OpenAI's schema that tandem refuses, per endpoint, with the values that ask for
nothing (accepted: ``store: false`` stores nothing, as asked)."""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` extra: exactly one constraint."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    json_: Annotated[dict[str, Any] | str | None, Field(alias="json")] = None
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def constraint(self) -> StructuredOutput:
        given = [name for name in ("json_", "json_object", "regex", "choice", "grammar")
                 if getattr(self, name) not in (None, False)]
        if len(given) != 1:
            raise invalid("structured_outputs takes exactly one of json, json_object, regex, "
                          "choice, grammar", "structured_outputs")
        kind = given[0]
        if kind == "json_":
            schema = self.json_ if isinstance(self.json_, str) else orjson.dumps(
                self.json_).decode()
            return StructuredOutput("json_schema", schema)
        if kind == "json_object":
            return StructuredOutput("json_object")
        if kind == "choice":
            return StructuredOutput("choice", tuple(self.choice or ()))
        return StructuredOutput(kind, str(getattr(self, kind)))  # type: ignore[arg-type]


class _Request(SamplingFields):
    model_config = ConfigDict(extra="forbid", strict=False)

    model: Annotated[str, Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    structured_outputs: StructuredOutputs | None = None

    endpoint: ClassVar[str] = "completion"
    """Its key in ``UNSERVED``."""
    default_max_tokens: ClassVar[int | None] = None

    def sampling(self) -> Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        max_tokens = self.max_completion_tokens or self.max_tokens or self.default_max_tokens
        self._check_min_tokens(max_tokens)
        return Sampling(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(stops),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            min_tokens=self.min_tokens or None,
            logit_bias=self.bias_pairs(),
            logprobs=self.logprobs_wanted(),
            structured_output=self.constraint(),
            prompt_logprobs=self.prompt_logprobs_wanted(),
        )

    def logprobs_wanted(self) -> int | None:
        return None

    def prompt_logprobs_wanted(self) -> int | None:
        return None

    def constraint(self) -> StructuredOutput | None:
        """The structured output constraint the request asks for (None: free text)."""
        if self.structured_outputs is None:
            return None
        structured = self.structured_outputs.constraint()
        check_structured(structured, "structured_outputs")
        return structured

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or self.content == []:
            return render_calls(self.tool_calls) if self.tool_calls else ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None
    """Honoured by construction: the output always follows the schema, strict or not."""


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    endpoint: ClassVar[str] = "chat"

    def conversation(self) -> list[dict[str, Any]]:
        """The messages for the chat template. With ``tool_choice: "auto"`` (a tools-aware
        template), an assistant's earlier calls stay ``tool_calls`` (arguments as objects);
        otherwise they are rendered as the JSON text the model wrote for them."""
        plan = self.tool_plan()
        if plan is None or not plan.auto:
            return [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.text()} for m in self.messages]
        return [{"role": "system" if m.role == "developer" else m.role,
                 "content": m.text() if not m.tool_calls else (m.text() if m.content else ""),
                 "tool_calls": [_template_call(call) for call in m.tool_calls or ()]}
                for m in self.messages]

    def logprobs_wanted(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs needs logprobs: true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def tool_plan(self) -> ToolPlan | None:
        if self.parallel_tool_calls is not None and not self.tools:
            raise invalid("parallel_tool_calls is only allowed when tools are given",
                          "parallel_tool_calls")
        return plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def constraint(self) -> StructuredOutput | None:
        plan = self.tool_plan()
        asked = [name for name, given in (
            ("response_format", self.response_format is not None
             and self.response_format.type != "text"),
            ("structured_outputs", self.structured_outputs is not None),
            ("tool_choice", plan is not None)) if given]
        if len(asked) > 1:
            raise invalid(f"{' and '.join(asked)} each constrain the output: give one",
                          asked[1])
        if plan is not None:
            return plan.constraint
        if self.response_format is None or self.response_format.type == "text":
            return super().constraint()
        if self.response_format.type == "json_object":
            return StructuredOutput("json_object")
        spec = self.response_format.json_schema
        if spec is None:
            raise invalid("response_format json_schema needs its json_schema",
                          "response_format.json_schema")
        return StructuredOutput("json_schema", orjson.dumps(spec.schema_ or {}).decode())


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = function.get("arguments")
    return {"type": "function", "function": {"name": function.get("name"),
                                             "arguments": arguments}}


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[
        list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    default_max_tokens: ClassVar[int | None] = COMPLETIONS_MAX_TOKENS

    def prompt_text_or_tokens(self) -> str | list[int]:
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return [int(token) for token in self.prompt]

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_wanted(self) -> int | None:
        """``echo`` with ``logprobs``: the echoed prompt's log probabilities too."""
        return self.logprobs if self.echo else None


_Request.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


def parse_request(body: bytes, kind: type[_Request]) -> Any:
    """Parses and validates a JSON body; raises a TandemError (→ 400) naming the parameter."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise invalid(f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    if data.get("stream_options") is not None and not data.get("stream"):
        raise invalid("stream_options is only allowed when stream is true", "stream_options")
    for name, neutral in UNSERVED[kind.endpoint].items():
        if data.get(name) is not None and data[name] not in neutral:
            raise invalid(f"{name} is not supported by tandem", name)
        data.pop(name, None)  # it asks for nothing
    try:
        request = kind.model_validate(data)
    except ValidationError as error:
        raise refusal(error) from None
    request.sampling()  # the rules between fields (a 400 here, not once streaming)
    return request


def error_body(error: TandemError, error_type: str) -> bytes:
    return orjson.dumps({"error": {"message": error.message, "type": error_type,
                                   "param": error.param or None,
                                   "code": _CODE_NAMES.get(error.code)}})


_CODE_NAMES = {
    common_pb2.ERROR_CODE_INVALID_REQUEST: "invalid_request",
    common_pb2.ERROR_CODE_MODEL_NOT_FOUND: "model_not_found",
    common_pb2.ERROR_CODE_UNAVAILABLE: "service_unavailable",
    common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: "context_length_exceeded",
    common_pb2.ERROR_CODE_INTERNAL: "internal_error",
    common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: "rate_limit_exceeded",
    common_pb2.ERROR_CODE_DEADLINE_EXCEEDED: "timeout",
}
