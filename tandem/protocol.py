"""Conversions between the wire messages (tandem.v1) and engine-neutral types."""

from __future__ import annotations

from tandem.engines.base import Sampling
from tandem.v1 import common_pb2

FINISH_TO_PROTO = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
    "error": common_pb2.FINISH_REASON_ERROR,
}
FINISH_FROM_PROTO = {value: key for key, value in FINISH_TO_PROTO.items()}


def sampling_to_proto(sampling: Sampling) -> common_pb2.SamplingParams:
    message = common_pb2.SamplingParams(
        stop=list(sampling.stop),
        stop_token_ids=list(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
    )
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed",
                 "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if value is not None:
            setattr(message, name, value)
    return message


def sampling_from_proto(message: common_pb2.SamplingParams) -> Sampling:
    def optional(name: str) -> object:
        return getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]

    return Sampling(
        max_tokens=optional("max_tokens"),  # type: ignore[arg-type]
        temperature=optional("temperature"),  # type: ignore[arg-type]
        top_p=optional("top_p"),  # type: ignore[arg-type]
        top_k=optional("top_k"),  # type: ignore[arg-type]
        seed=optional("seed"),  # type: ignore[arg-type]
        stop=tuple(message.stop),
        stop_token_ids=tuple(message.stop_token_ids),
        ignore_eos=message.ignore_eos,
        presence_penalty=optional("presence_penalty"),  # type: ignore[arg-type]
        frequency_penalty=optional("frequency_penalty"),  # type: ignore[arg-type]
    )
