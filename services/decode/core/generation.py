"""One generation's shape: the engine request it runs (continuing a remote prefill when there
was one) and how a batch of ready outputs becomes one message."""

from __future__ import annotations

import dataclasses

from tandem.engines.base import EngineOutput, EngineRequest
from tandem.errors import invalid
from tandem.protocol import sampling_from_proto
from tandem.v1 import worker_pb2
from tandem.worker.kv_params import kv_transfer_params


def continuation(request: worker_pb2.GenerateRequest,
                 headers: dict[str, str] | None) -> EngineRequest:
    """The engine request for a generation; after a remote prefill it continues from the
    prefill's first token (already sent to the client) over the prompt's stored blocks."""
    prompt = list(request.prompt_token_ids)
    sampling = sampling_from_proto(request.sampling)
    if request.HasField("first_token_id"):
        if sampling.max_tokens is not None and sampling.max_tokens < 2:
            raise invalid("with a first token, max_tokens must leave a token to generate",
                          "max_tokens")
        prompt.append(request.first_token_id)
        if sampling.max_tokens is not None:
            sampling = dataclasses.replace(sampling, max_tokens=sampling.max_tokens - 1)
    handle = request.kv_handle if request.HasField("kv_handle") else None
    return EngineRequest(
        request_id=request.request_id, prompt_token_ids=prompt, sampling=sampling,
        trace_headers=headers, kv_transfer=kv_transfer_params(request.hash_salt, handle))


def merged(batch: list[EngineOutput]) -> tuple[list[int], str]:
    """Token ids and text of a batch, in order (a lone output is passed through as is)."""
    if len(batch) == 1:
        return batch[0].token_ids, batch[0].text
    token_ids: list[int] = []
    for output in batch:
        token_ids.extend(output.token_ids)
    return token_ids, "".join([output.text for output in batch])
