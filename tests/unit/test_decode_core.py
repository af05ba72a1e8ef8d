"""The decode worker's pure core, table-driven: the engine request of a generation (fresh, or
continuing a remote prefill) and the merge of a batch of ready outputs into one message."""

from __future__ import annotations

from typing import Any

import pytest

from services.decode.core.generation import continuation, merged
from tandem.engines.base import EngineOutput, Logprob, TokenLogprobs
from tandem.errors import TandemError
from tandem.v1 import common_pb2, worker_pb2

SALT = b"\x01\x02"
HANDLE = common_pb2.KVHandle(block_size=2, block_hashes=[b"\xaa", b"\xbb"], num_tokens=4)


def generate(max_tokens: int | None = None, first_token_id: int | None = None,
             handle: common_pb2.KVHandle | None = None, salt: bytes = b"",
             generated: tuple[int, ...] = (), structured: bool = False,
             min_tokens: int | None = None) -> worker_pb2.GenerateRequest:
    request = worker_pb2.GenerateRequest(request_id="r1", prompt_token_ids=[5, 6, 7, 8],
                                         hash_salt=salt, generated_token_ids=generated)
    if max_tokens is not None:
        request.sampling.max_tokens = max_tokens
    if min_tokens is not None:
        request.sampling.min_tokens = min_tokens
    if structured:
        request.sampling.structured_output.json_object = True
    if first_token_id is not None:
        request.first_token_id = first_token_id
    if handle is not None:
        request.kv_handle.CopyFrom(handle)
    return request


@pytest.mark.parametrize(("request_", "prompt", "max_tokens", "kv_transfer"), [
    (generate(), [5, 6, 7, 8], None, None),
    (generate(max_tokens=10), [5, 6, 7, 8], 10, None),
    # after a remote prefill: the first token joins the prompt and counts against max_tokens
    (generate(max_tokens=10, first_token_id=9), [5, 6, 7, 8, 9], 9, None),
    (generate(max_tokens=2, first_token_id=9), [5, 6, 7, 8, 9], 1, None),
    (generate(first_token_id=9), [5, 6, 7, 8, 9], None, None),
    (generate(salt=SALT), [5, 6, 7, 8], None, {"salt": "0102"}),
    (generate(max_tokens=4, first_token_id=9, handle=HANDLE, salt=SALT),
     [5, 6, 7, 8, 9], 3, {"salt": "0102", "block_hashes": ["aa", "bb"], "num_tokens": 4}),
    # a handle without blocks carries nothing for the connector
    (generate(handle=common_pb2.KVHandle(block_size=2)), [5, 6, 7, 8], None, None),
    # a migrated stream's tokens follow the first token
    (generate(max_tokens=10, first_token_id=9, generated=(10, 11)), [5, 6, 7, 8, 9, 10, 11],
     7, None),
    (generate(max_tokens=10, generated=(10, 11)), [5, 6, 7, 8, 10, 11], 8, None),
])
def test_the_engine_request_of_a_generation(
        request_: worker_pb2.GenerateRequest, prompt: list[int], max_tokens: int | None,
        kv_transfer: dict[str, Any] | None) -> None:
    headers = {"traceparent": "00-1-2-01"}
    engine_request = continuation(request_, headers)
    assert engine_request.request_id == "r1"
    assert engine_request.prompt_token_ids == prompt
    assert engine_request.forced_output == ()
    assert engine_request.sampling.max_tokens == max_tokens
    assert engine_request.trace_headers == headers
    assert engine_request.kv_transfer == kv_transfer


@pytest.mark.parametrize(("request_", "forced", "max_tokens", "min_tokens"), [
    # under a structured output constraint the tokens generated before are replayed as output
    (generate(max_tokens=10, first_token_id=9, structured=True), (9,), 9, None),
    (generate(first_token_id=9, generated=(10,), structured=True, min_tokens=5), (9, 10),
     None, 3),
    (generate(generated=(10, 11), structured=True, min_tokens=1), (10, 11), None, 0),
    (generate(max_tokens=4, structured=True, min_tokens=2), (), 4, 2),
])
def test_a_structured_continuation_replays_the_tokens_before(
        request_: worker_pb2.GenerateRequest, forced: tuple[int, ...], max_tokens: int | None,
        min_tokens: int | None) -> None:
    engine_request = continuation(request_, None)
    assert engine_request.prompt_token_ids == [5, 6, 7, 8]
    assert engine_request.forced_output == forced
    assert engine_request.sampling.max_tokens == max_tokens
    assert engine_request.sampling.min_tokens == min_tokens


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_a_continuation_must_leave_a_token_to_generate(max_tokens: int) -> None:
    with pytest.raises(TandemError) as raised:
        continuation(generate(max_tokens=max_tokens, first_token_id=9), None)
    assert raised.value.code == common_pb2.ERROR_CODE_INVALID_REQUEST
    assert raised.value.param == "max_tokens"


LONE = EngineOutput([1, 2], "ab")


@pytest.mark.parametrize(("batch", "token_ids", "text"), [
    ([LONE], [1, 2], "ab"),
    ([EngineOutput([1], "a"), EngineOutput([2, 3], "bc"), EngineOutput([4], "d", "stop")],
     [1, 2, 3, 4], "abcd"),
    ([EngineOutput([], ""), EngineOutput([7], "x")], [7], "x"),
])
def test_a_batch_merges_into_its_tokens_in_order(
        batch: list[EngineOutput], token_ids: list[int], text: str) -> None:
    assert merged(batch) == (token_ids, text, ())


def test_a_batch_merges_its_logprobs_in_order() -> None:
    first = TokenLogprobs(Logprob(1, "a", -0.5))
    second = TokenLogprobs(Logprob(2, "b", -1.5), (Logprob(3, "c", -0.1),))
    batch = [EngineOutput([1], "a", logprobs=(first,)), EngineOutput([2], "b",
                                                                     logprobs=(second,))]
    assert merged(batch)[2] == (first, second)


def test_a_lone_output_is_passed_through_as_is() -> None:
    assert merged([LONE])[0] is LONE.token_ids
