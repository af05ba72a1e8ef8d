"""Conversions between the wire messages (tandem.v1) and engine-neutral types."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tandem.engines.base import Logprob, Sampling, StructuredOutput, TokenLogprobs
from tandem.v1 import common_pb2, worker_pb2

FINISH_TO_PROTO = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
    "error": common_pb2.FINISH_REASON_ERROR,
}
FINISH_FROM_PROTO = {value: key for key, value in FINISH_TO_PROTO.items()}

_OPTIONAL = ("max_tokens", "temperature", "top_p", "top_k", "seed", "presence_penalty",
             "frequency_penalty", "min_tokens", "logprobs", "prompt_logprobs")


def sampling_to_proto(sampling: Sampling) -> common_pb2.SamplingParams:
    message = common_pb2.SamplingParams(
        stop=list(sampling.stop),
        stop_token_ids=list(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
        logit_bias=dict(sampling.logit_bias),
    )
    for name in _OPTIONAL:
        value = getattr(sampling, name)
        if value is not None:
            setattr(message, name, value)
    if sampling.structured_output is not None:
        message.structured_output.CopyFrom(structured_to_proto(sampling.structured_output))
    return message


def sampling_from_proto(message: common_pb2.SamplingParams) -> Sampling:
    values = {name: getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]
              for name in _OPTIONAL}
    return Sampling(
        stop=tuple(message.stop),
        stop_token_ids=tuple(message.stop_token_ids),
        ignore_eos=message.ignore_eos,
        logit_bias=tuple(sorted(message.logit_bias.items())),
        structured_output=structured_from_proto(message.structured_output)
        if message.HasField("structured_output") else None,
        **values,  # type: ignore[arg-type]
    )


def structured_to_proto(structured: StructuredOutput) -> common_pb2.StructuredOutput:
    message = common_pb2.StructuredOutput()
    if structured.kind == "choice":
        message.choice.choices.extend(structured.value)
    elif structured.kind == "json_object":
        message.json_object = True
    else:
        setattr(message, structured.kind, structured.value)
    return message


def structured_from_proto(message: common_pb2.StructuredOutput) -> StructuredOutput | None:
    """None for a message with no constraint set (``json_object`` false counts as none)."""
    kind = message.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not message.json_object):
        return None
    if kind == "choice":
        return StructuredOutput("choice", tuple(message.choice.choices))
    if kind == "json_object":
        return StructuredOutput("json_object")
    return StructuredOutput(kind, getattr(message, kind))  # type: ignore[arg-type]


def logprobs_to_proto(entries: Iterable[TokenLogprobs]) -> list[common_pb2.TokenLogprobs]:
    return [common_pb2.TokenLogprobs(
        sampled=_logprob_to_proto(entry.sampled),
        top=[_logprob_to_proto(top) for top in entry.top]) for entry in entries]


def logprobs_from_proto(entries: Sequence[common_pb2.TokenLogprobs]) -> tuple[TokenLogprobs, ...]:
    return tuple(TokenLogprobs(_logprob_from_proto(entry.sampled),
                               tuple(_logprob_from_proto(top) for top in entry.top))
                 for entry in entries)


def _logprob_to_proto(logprob: Logprob) -> common_pb2.Logprob:
    return common_pb2.Logprob(token_id=logprob.token_id, token=logprob.token,
                              logprob=logprob.logprob)


def _logprob_from_proto(message: common_pb2.Logprob) -> Logprob:
    return Logprob(message.token_id, message.token, message.logprob)


def coalesced(responses: Sequence[worker_pb2.GenerateResponse]) -> worker_pb2.GenerateResponse:
    """Consecutive messages of one Generate stream as one (the contract lets a stream coalesce
    deltas): token ids, text and logprobs joined in order; the first message's engine, resumed
    text and prompt logprobs; the last one's finish reason and usage. The first message is
    extended in place."""
    first = responses[0]
    delta = first.delta
    token_ids: list[int] = []
    texts = [delta.text]
    for response in responses[1:]:
        more = response.delta
        token_ids += more.token_ids
        texts.append(more.text)
        if more.logprobs:
            delta.logprobs.extend(more.logprobs)
        if more.prompt_logprobs:
            delta.prompt_logprobs.extend(more.prompt_logprobs)
        if response.finish_reason:
            first.finish_reason = response.finish_reason
        if response.HasField("usage"):
            first.usage.CopyFrom(response.usage)
        if not first.engine:
            first.engine = response.engine
    delta.token_ids.extend(token_ids)
    delta.text = "".join(texts)
    return first
