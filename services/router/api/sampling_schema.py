"""The sampling parameters both router APIs accept, and their limits: one pydantic model that
the OpenAI schema extends and the gRPC API checks its ``SamplingParams`` against, so a value is
refused (400 / INVALID_ARGUMENT naming it) the same way on either, never passed on to an engine
that would ignore it or fail on it. Also: pydantic's errors as such a refusal."""

from __future__ import annotations

import re
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tandem.engines.base import Sampling, StructuredOutput
from tandem.errors import TandemError, invalid

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 16
"""Most choices (``n``) of one request: each runs as its own request through the fleet."""
MAX_LOGIT_BIAS = 300
"""Entries of logit_bias (OpenAI's limit)."""
MAX_LOGPROBS = 20
"""Most likely alternatives per token (vLLM's default max_logprobs; OpenAI's top_logprobs)."""
UINT32 = 2**32 - 1
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
"""Ranges of the wire fields (tandem.v1.SamplingParams) that carry top_k and seed."""


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=INT32[1])] | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=UINT32)] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=UINT32)]] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key in value or {}:
            if not key.isdigit() or int(key) > UINT32:
                raise ValueError(f"keys must be token ids, not {key!r}")
        return value

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        biases = self.logit_bias or {}
        return tuple(sorted((int(key), float(bias)) for key, bias in biases.items()))

    def _check_min_tokens(self, max_tokens: int | None) -> None:
        if self.min_tokens and max_tokens is not None and self.min_tokens > max_tokens:
            raise invalid(f"min_tokens ({self.min_tokens}) must not exceed max_tokens "
                          f"({max_tokens})", "min_tokens")

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return value


def check_sampling(sampling: Sampling, prefix: str = "") -> None:
    """Refuses a Sampling (from the wire) outside SamplingFields' limits; the parameter is
    named with ``prefix`` (``sampling.``)."""
    values = {name: getattr(sampling, name) for name in SamplingFields.model_fields}
    values["stop"] = list(sampling.stop)
    values["stop_token_ids"] = list(sampling.stop_token_ids)
    values["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    try:
        SamplingFields.model_validate(values)._check_min_tokens(sampling.max_tokens)
    except ValidationError as error:
        raise refusal(error, prefix) from None
    except TandemError as error:
        raise invalid(error.message, prefix + error.param) from None
    if sampling.logprobs is not None and sampling.logprobs > MAX_LOGPROBS:
        raise invalid(f"{prefix}logprobs: at most {MAX_LOGPROBS}", prefix + "logprobs")
    if sampling.structured_output is not None:
        check_structured(sampling.structured_output, prefix + "structured_output")


def check_structured(structured: StructuredOutput, param: str) -> None:
    """Refuses a constraint that is malformed before any engine sees it (the engine checks what
    it compiles: a schema or grammar it cannot serve is refused by the worker)."""
    if structured.kind == "json_schema":
        try:
            schema = orjson.loads(str(structured.value))
        except orjson.JSONDecodeError as error:
            raise invalid(f"{param}: the JSON schema is not valid JSON: {error}", param) from None
        if not isinstance(schema, dict):
            raise invalid(f"{param}: a JSON schema is a JSON object", param)
    elif structured.kind == "choice" and (not structured.value or not all(structured.value)):
        raise invalid(f"{param}: choices must be non-empty strings, at least one", param)
    elif structured.kind == "regex":
        try:
            re.compile(str(structured.value))
        except re.error as error:
            raise invalid(f"{param}: not a regular expression: {error}", param) from None
    elif structured.kind == "grammar" and not str(structured.value).strip():
        raise invalid(f"{param}: the grammar is empty", param)


def check_token_ids(sampling: Sampling, vocab_size: int, prefix: str = "") -> None:
    """Refuses token ids (in logit_bias, stop_token_ids) outside the model's vocabulary."""
    for name, tokens in (("logit_bias", [token for token, _ in sampling.logit_bias]),
                         ("stop_token_ids", list(sampling.stop_token_ids))):
        if any(token >= vocab_size for token in tokens):
            raise invalid(f"{prefix}{name}: token ids must be below the vocabulary size "
                          f"{vocab_size}", prefix + name)


def refusal(error: ValidationError, prefix: str = "") -> TandemError:
    """The first problem pydantic found, as a 400 / INVALID_ARGUMENT naming the parameter."""
    first = error.errors()[0]
    param = _first_field(first["loc"])
    param = prefix + param if param else param
    return invalid(f"{param}: {first['msg']}" if param else first["msg"], param)


def _first_field(loc: tuple[Any, ...]) -> str:
    """The parameter path of a validation error, without pydantic's union branch names."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part in ("str", "list[str]", "list[int]", "list[TextPart]", "function-after",
                      "literal[1]", "literal[False]", "none", "bool", "int",
                      "function-wrap") or "[" in str(part):
            continue
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)
