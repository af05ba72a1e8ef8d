"""One generation's shape: the engine request it runs (continuing a remote prefill when there
was one) and how a batch of ready outputs becomes one message."""

from __future__ import annotations

import dataclasses

from tandem.engines.base import EngineOutput, EngineRequest, TokenLogprobs
from tandem.errors import invalid
from tandem.protocol import sampling_from_proto
from tandem.v1 import worker_pb2
from tandem.worker.kv_params import kv_transfer_params


def generated_before(request: worker_pb2.GenerateRequest) -> list[int]:
    """The request's output tokens generated before this call (the prefill worker's first
    token, a lost decode worker's tokens), already sent to the client."""
    before = [request.first_token_id] if request.HasField("first_token_id") else []
    return before + list(request.generated_token_ids)


def continuation(request: worker_pb2.GenerateRequest,
                 headers: dict[str, str] | None) -> EngineRequest:
    """The engine request for a generation; after a remote prefill it continues from the
    prefill's first token (already sent to the client) over the prompt's stored blocks, and
    after a migration from the tokens the lost worker sent. Those tokens extend the prompt;
    under a structured output constraint they are replayed as output instead (the engine's
    ``forced_output``), so that the constraint continues where it stood. The max_tokens and
    min_tokens left shrink by them either way."""
    prompt = list(request.prompt_token_ids)
    sampling = sampling_from_proto(request.sampling)
    before = generated_before(request)
    forced: tuple[int, ...] = ()
    if before:
        if sampling.max_tokens is not None and sampling.max_tokens <= len(before):
            raise invalid("max_tokens must leave a token to generate after the "
                          f"{len(before)} tokens generated before", "max_tokens")
        if sampling.structured_output is not None:
            forced = tuple(before)
        else:
            prompt.extend(before)
        sampling = dataclasses.replace(
            sampling,
            max_tokens=None if sampling.max_tokens is None
            else sampling.max_tokens - len(before),
            min_tokens=max(0, sampling.min_tokens - len(before)) if sampling.min_tokens
            else sampling.min_tokens)
    handle = request.kv_handle if request.HasField("kv_handle") else None
    return EngineRequest(
        request_id=request.request_id, prompt_token_ids=prompt, sampling=sampling,
        trace_headers=headers, kv_transfer=kv_transfer_params(request.hash_salt, handle),
        forced_output=forced)


def prompt_logprobs(batch: list[EngineOutput]) -> tuple[TokenLogprobs, ...]:
    """The prompt's log probabilities, where an output of the batch carries them."""
    return next((output.prompt_logprobs for output in batch if output.prompt_logprobs), ())


def merged(batch: list[EngineOutput]) -> tuple[list[int], str, tuple[TokenLogprobs, ...]]:
    """Token ids, text and log probabilities of a batch, in order (a lone output is passed
    through as is)."""
    if len(batch) == 1:
        return batch[0].token_ids, batch[0].text, batch[0].logprobs
    token_ids: list[int] = []
    logprobs: list[TokenLogprobs] = []
    for output in batch:
        token_ids.extend(output.token_ids)
        logprobs.extend(output.logprobs)
    return token_ids, "".join([output.text for output in batch]), tuple(logprobs)
