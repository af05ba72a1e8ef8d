"""OpenAI API requests: validation into engine-neutral parameters.

Every invalid field becomes a 400 naming the parameter; unknown fields are ignored (SDKs send
extras). Only what tandem serves is accepted: one choice, text content.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.router.api.sampling_schema import SamplingFields, refusal
from tandem.engines.base import Sampling
from tandem.errors import TandemError, invalid
from tandem.v1 import common_pb2


class _Request(SamplingFields):
    model: Annotated[str, Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Literal[False] | None = None
    user: str | None = None

    def sampling(self) -> Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Sampling(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(stops),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Request):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[
        list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    echo: Literal[False] | None = None
    suffix: None = None
    best_of: Literal[1] | None = None

    def prompt_text_or_tokens(self) -> str | list[int]:
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return str(self.prompt[0])
        return [int(token) for token in self.prompt]


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
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        raise refusal(error) from None


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
