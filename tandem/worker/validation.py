"""What a prompt request must satisfy before it reaches the engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tandem.engines.base import Engine
from tandem.errors import TandemError, invalid
from tandem.protocol import sampling_from_proto
from tandem.v1 import common_pb2


class PromptRequest(Protocol):
    """What GenerateRequest and PrefillRequest share."""

    @property
    def request_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def prompt_token_ids(self) -> Sequence[int]: ...
    @property
    def sampling(self) -> common_pb2.SamplingParams: ...


def validate_prompt(request: PromptRequest, engine: Engine, model: str) -> None:
    """Rejects what the engine cannot serve, as a client error."""
    if request.model and request.model != model:
        raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                          f"this worker serves {model!r}, not {request.model!r}", "model")
    prompt_tokens = len(request.prompt_token_ids)
    if prompt_tokens == 0:
        raise invalid("the prompt is empty", "prompt")
    unsupported = engine.unsupported(sampling_from_proto(request.sampling))
    if unsupported is not None:
        raise invalid(f"{unsupported} is not supported by this worker's engine "
                      f"({engine.fingerprint})", unsupported)
    wanted = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 1
    if prompt_tokens + wanted > engine.max_model_len:
        raise TandemError(
            common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            f"{prompt_tokens} prompt tokens + {wanted} completion tokens exceed the model's "
            f"context of {engine.max_model_len} tokens", "max_tokens")
