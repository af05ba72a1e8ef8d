"""The decode call that resumes a migrated stream (``worker_clients.resume_request``), and the
whole request's usage from its last worker's (``splice.whole_usage``): table-driven."""

from __future__ import annotations

import dataclasses

import pytest

from services.router.core.request import GenerationRequest
from services.router.splice import whole_usage
from services.router.worker_clients import resume_request
from tandem.engines.base import Sampling, StructuredOutput
from tandem.protocol import sampling_from_proto
from tandem.v1 import common_pb2, worker_pb2

PROMPT = [5, 6, 7]
HANDOFF = worker_pb2.PrefillResponse(
    first_token_id=40, kv_handle=common_pb2.KVHandle(block_hashes=[b"h1"], num_tokens=3))


@pytest.mark.parametrize(("sampling", "produced", "handoff", "prompt", "max_tokens"), [
    (Sampling(max_tokens=10, temperature=0.0), [40, 41], None, [5, 6, 7, 40, 41], 8),
    (Sampling(max_tokens=10, temperature=0.0), [40, 41], HANDOFF, [5, 6, 7, 40, 41], 8),
    (Sampling(max_tokens=3), [40, 41], None, [5, 6, 7, 40, 41], 1),  # one token left
    (Sampling(), [40], None, [5, 6, 7, 40], None),  # no max_tokens: none after either
])
def test_a_resumed_request_continues_from_the_tokens_sent(
        sampling: Sampling, produced: list[int], handoff: worker_pb2.PrefillResponse | None,
        prompt: list[int], max_tokens: int | None) -> None:
    request = GenerationRequest("r1", "m", PROMPT, sampling, tenant="t")
    message = resume_request(request, b"salt", produced, handoff)
    assert list(message.prompt_token_ids) == prompt
    resumed = sampling_from_proto(message.sampling)
    assert resumed.max_tokens == max_tokens
    assert resumed == dataclasses.replace(sampling, max_tokens=max_tokens)
    assert (message.request_id, message.model, message.hash_salt) == ("r1", "m", b"salt")
    assert not message.HasField("first_token_id")
    assert message.HasField("kv_handle") == (handoff is not None)
    if handoff is not None:
        assert message.kv_handle == handoff.kv_handle
    assert request.prompt_token_ids == PROMPT  # the request itself is left as it was


JSON = StructuredOutput("json_object")


@pytest.mark.parametrize(("sampling", "produced", "min_tokens"), [
    (Sampling(max_tokens=10, min_tokens=5, logprobs=2, logit_bias=((3, 1.0),)), [40, 41], 3),
    (Sampling(max_tokens=10, min_tokens=1), [40, 41], 0),
])
def test_a_resumed_request_carries_every_parameter(
        sampling: Sampling, produced: list[int], min_tokens: int) -> None:
    message = resume_request(GenerationRequest("r1", "m", PROMPT, sampling), b"", produced,
                             None)
    assert sampling_from_proto(message.sampling) == dataclasses.replace(
        sampling, max_tokens=8, min_tokens=min_tokens)


@pytest.mark.parametrize("handoff", [None, HANDOFF])
def test_a_structured_request_resumes_with_the_tokens_sent_as_output(
        handoff: worker_pb2.PrefillResponse | None) -> None:
    """The constraint must see the tokens sent as output: they go as generated tokens (the
    worker replays them, and takes them off max_tokens itself), not as prompt."""
    sampling = Sampling(max_tokens=10, min_tokens=4, structured_output=JSON)
    message = resume_request(GenerationRequest("r1", "m", PROMPT, sampling), b"", [40, 41],
                             handoff)
    assert list(message.prompt_token_ids) == PROMPT
    assert list(message.generated_token_ids) == [40, 41]
    assert sampling_from_proto(message.sampling) == sampling
    assert message.HasField("kv_handle") == (handoff is not None)


@pytest.mark.parametrize(("worker", "resumed_from", "whole"), [
    ((25, 5, 0), 20, (5, 25, 0)),  # 5 prompt tokens + 20 sent; 5 new
    ((25, 5, 24), 20, (5, 25, 5)),  # cached tokens: the original prompt's at most
    ((8, 1, 3), 3, (5, 4, 3)),
])
def test_the_usage_of_a_migrated_request_is_the_whole_request(
        worker: tuple[int, int, int], resumed_from: int, whole: tuple[int, int, int]) -> None:
    usage = whole_usage(common_pb2.Usage(prompt_tokens=worker[0], completion_tokens=worker[1],
                                          cached_tokens=worker[2]), 5, resumed_from)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == whole
