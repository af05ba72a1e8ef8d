"""``coalesced``: consecutive Generate messages as one, for every field of the message."""

from __future__ import annotations

from tandem.protocol import coalesced
from tandem.v1 import common_pb2, worker_pb2

HANDLED = {"GenerateResponse": {"delta", "finish_reason", "usage", "engine", "resumed_text"},
           "TokenDelta": {"token_ids", "text", "logprobs", "prompt_logprobs"}}


def logprob(token: int) -> common_pb2.TokenLogprobs:
    return common_pb2.TokenLogprobs(
        sampled=common_pb2.Logprob(token_id=token, logprob=-0.5 * token))


def message(tokens: list[int], text: str, **fields: object) -> worker_pb2.GenerateResponse:
    return worker_pb2.GenerateResponse(delta=common_pb2.TokenDelta(
        token_ids=tokens, text=text, logprobs=[logprob(t) for t in tokens]), **fields)


def test_every_field_of_the_messages_is_handled() -> None:
    """A field added to the contract must be given its coalescing rule here and in
    ``coalesced``."""
    assert {f.name for f in worker_pb2.GenerateResponse.DESCRIPTOR.fields} == \
        HANDLED["GenerateResponse"]
    assert {f.name for f in common_pb2.TokenDelta.DESCRIPTOR.fields} == HANDLED["TokenDelta"]


def test_tokens_text_and_logprobs_join_in_order_and_the_end_is_the_last_ones() -> None:
    first = message([1], "He", engine="mock-simulated", resumed_text="before")
    first.delta.prompt_logprobs.append(logprob(7))
    middle = message([2, 3], "llo")
    last = message([4], "!", finish_reason=common_pb2.FINISH_REASON_LENGTH,
                   usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=4))
    joined = coalesced([first, middle, last])
    assert list(joined.delta.token_ids) == [1, 2, 3, 4]
    assert joined.delta.text == "Hello!"
    assert [p.sampled.token_id for p in joined.delta.logprobs] == [1, 2, 3, 4]
    assert [p.sampled.token_id for p in joined.delta.prompt_logprobs] == [7]
    assert joined.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert joined.usage.completion_tokens == 4 and joined.usage.prompt_tokens == 5
    assert joined.engine == "mock-simulated" and joined.resumed_text == "before"


def test_messages_before_the_end_leave_no_finish_reason_nor_usage() -> None:
    joined = coalesced([message([1], "a"), message([2], "b")])
    assert joined.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED
    assert not joined.HasField("usage")
    assert joined.delta.text == "ab"


def test_one_message_is_itself() -> None:
    only = message([9], "x")
    assert coalesced([only]) is only
