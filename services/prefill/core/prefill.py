"""One prefill's shape: the engine request (one token, the prompt's blocks saved), the token
it produced, and the response that hands the prompt's KV cache on."""

from __future__ import annotations

import dataclasses

from tandem.engines.base import EngineOutput, EngineRequest, TokenLogprobs
from tandem.errors import TandemError
from tandem.hashing import hash_salt, prompt_hashes
from tandem.protocol import FINISH_TO_PROTO, logprobs_to_proto, sampling_from_proto
from tandem.v1 import common_pb2, worker_pb2
from tandem.worker.kv_params import kv_transfer_params


def prefill_salt(request: worker_pb2.PrefillRequest, model: str) -> bytes:
    """Salt of the prompt's block hashes: the request's, else the model's."""
    return request.hash_salt or hash_salt(model)


def prefill_request(request: worker_pb2.PrefillRequest, salt: bytes,
                    headers: dict[str, str]) -> EngineRequest:
    """The engine request: the prompt for one token, with every whole block saved."""
    sampling = sampling_from_proto(request.sampling)
    return EngineRequest(
        request_id=request.request_id, prompt_token_ids=list(request.prompt_token_ids),
        sampling=dataclasses.replace(sampling, max_tokens=1,
                                     min_tokens=min(sampling.min_tokens, 1)
                                     if sampling.min_tokens else sampling.min_tokens),
        trace_headers=headers,
        kv_transfer=kv_transfer_params(salt, save=True))


@dataclasses.dataclass
class FirstToken:
    """What the engine produced for a prefill, gathered output by output."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    finish: str | None = None
    cached: int = 0
    logprobs: list[TokenLogprobs] = dataclasses.field(default_factory=list)

    def add(self, output: EngineOutput) -> None:
        self.token_ids += output.token_ids
        self.text += output.text
        self.logprobs += output.logprobs
        self.finish = output.finish_reason or self.finish
        self.cached = self.cached or output.cached_tokens


def client_finish(engine_finish: str | None, wanted: int | None) -> str | None:
    """Why the request ends, for the client: one token is "length" for the engine, but the
    request goes on unless it asked for one token or the first token stopped it."""
    if engine_finish == "length" and wanted != 1:
        return None
    return engine_finish


def prefill_response(request: worker_pb2.PrefillRequest, first: FirstToken, *, salt: bytes,
                     block_size: int, fingerprint: str, store_address: str,
                     store_host: str) -> worker_pb2.PrefillResponse:
    """The first token, and the KV handle of the prompt's blocks in the store."""
    if not first.token_ids:
        raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE, "prefill produced no token")
    finish = client_finish(first.finish, sampling_from_proto(request.sampling).max_tokens)
    hashes = prompt_hashes(request.prompt_token_ids, block_size, salt)
    return worker_pb2.PrefillResponse(
        first_token_id=first.token_ids[0], first_token_text=first.text,
        kv_handle=common_pb2.KVHandle(
            block_size=block_size, block_hashes=hashes,
            num_tokens=len(request.prompt_token_ids),
            store_address=store_address, store_host=store_host),
        finish_reason=FINISH_TO_PROTO[finish] if finish else
        common_pb2.FINISH_REASON_UNSPECIFIED,
        usage=common_pb2.Usage(prompt_tokens=len(request.prompt_token_ids),
                               completion_tokens=1, cached_tokens=first.cached),
        engine=fingerprint,
        first_token_logprobs=logprobs_to_proto(first.logprobs[:1])[0] if first.logprobs
        else None)
