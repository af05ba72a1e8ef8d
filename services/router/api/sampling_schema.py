"""The sampling parameters both router APIs accept, and their limits: one pydantic model that
the OpenAI schema extends and the gRPC API checks its ``SamplingParams`` against, so a value is
refused (400 / INVALID_ARGUMENT naming it) the same way on either, never passed on to an engine
that would ignore it or fail on it. Also: pydantic's errors as such a refusal."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tandem.engines.base import Sampling
from tandem.errors import TandemError, invalid

MAX_STOP_SEQUENCES = 16
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
    try:
        SamplingFields.model_validate(values)
    except ValidationError as error:
        raise refusal(error, prefix) from None


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
                      "literal[1]", "literal[False]", "none") or "[" in str(part):
            continue
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)
