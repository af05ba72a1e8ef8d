"""tandem's sampling as vLLM's (``vllm_sampling``), the forced output that continues a
structured output constraint on a decode worker (``vllm_forced``, on CPU tensors), and vLLM's
log probabilities as tandem's."""

from __future__ import annotations

import json

import pytest
import torch
from vllm.logprobs import Logprob as VllmLogprob
from vllm.v1.sample.logits_processor import BatchUpdate

from tandem.engines.base import Logprob, Sampling, StructuredOutput, TokenLogprobs
from tandem.engines.vllm_forced import ForcedOutput
from tandem.engines.vllm_sampling import (
    FORCED_OUTPUT_KEY,
    ForcedOutputCut,
    sampling_params,
    token_logprobs,
)


def test_the_sampling_reaches_vllm() -> None:
    params = sampling_params(Sampling(max_tokens=10, min_tokens=2, logprobs=3,
                                      logit_bias=((7, -5.0),), temperature=0.0), room=100)
    assert (params.max_tokens, params.min_tokens, params.logprobs) == (10, 2, 3)
    assert params.logit_bias == {7: -5.0}
    assert params.structured_outputs is None and not params.extra_args


def test_a_forced_output_counts_against_max_and_min_tokens() -> None:
    params = sampling_params(Sampling(max_tokens=10, min_tokens=2), room=100,
                             forced_output=(4, 5))
    assert (params.max_tokens, params.min_tokens) == (12, 4)
    assert params.extra_args == {FORCED_OUTPUT_KEY: [4, 5]}
    assert sampling_params(Sampling(), room=30, forced_output=(4,)).max_tokens == 30


@pytest.mark.parametrize(("structured", "field", "value"), [
    (StructuredOutput("json_schema", '{"type": "object"}'), "json", {"type": "object"}),
    (StructuredOutput("json_object"), "json_object", True),
    (StructuredOutput("regex", "[0-9]+"), "regex", "[0-9]+"),
    (StructuredOutput("choice", ("yes", "no")), "choice", ["yes", "no"]),
    (StructuredOutput("grammar", 'root ::= "a"'), "grammar", 'root ::= "a"'),
])
def test_structured_outputs_reach_vllm(structured: StructuredOutput, field: str,
                                       value: object) -> None:
    params = sampling_params(Sampling(structured_output=structured), room=10)
    assert getattr(params.structured_outputs, field) == value


@pytest.mark.parametrize(("outputs", "kept"), [
    # one step per output: the forced tokens' outputs vanish
    ([([4], '{"'), ([5], "a"), ([6], '":')], [([6], '":')]),
    # a lagging reader: vLLM merged the forced steps with the next
    ([([4, 5, 6], '{"a":')], [([6], ":")]),
])
def test_the_forced_output_is_cut_from_what_returns(
        outputs: list[tuple[list[int], str]], kept: list[tuple[list[int], str]]) -> None:
    cut = ForcedOutputCut(2, '{"a"')
    returned = [cut.cut(tokens, text, None)[:2] for tokens, text in outputs]
    assert [r for r in returned if r[0]] == kept


def batch(added: list[tuple[int, list[int], list[int]]]) -> BatchUpdate:
    from vllm import SamplingParams

    return BatchUpdate(batch_size=len(added), removed=[], moved=[], added=[
        (index, SamplingParams(extra_args={FORCED_OUTPUT_KEY: forced} if forced else None),
         [1, 2], output) for index, forced, output in added])


def test_the_logits_processor_leaves_only_the_next_forced_token() -> None:
    processor = ForcedOutput(None, torch.device("cpu"), False)
    output: list[int] = []
    other: list[int] = []
    processor.update_state(batch([(0, [3, 1], output), (1, [], other)]))
    logits = processor.apply(torch.zeros(2, 5))
    assert logits[0].argmax() == 3 and torch.isinf(logits[0]).sum() == 4
    assert not torch.isinf(logits[1]).any()  # a request without forced output is left alone
    output.append(3)
    processor.update_state(None)
    assert processor.apply(torch.zeros(2, 5))[0].argmax() == 1
    output.append(1)
    processor.update_state(None)
    assert not torch.isinf(processor.apply(torch.zeros(2, 5))).any()


def test_vllms_logprobs_become_tandems_with_the_top_by_rank() -> None:
    position = {9: VllmLogprob(-3.0, 4, "z"), 1: VllmLogprob(-0.1, 1, "a"),
                2: VllmLogprob(-0.5, 2, "b")}
    (entry,) = token_logprobs([9], [position], 2)
    assert entry == TokenLogprobs(Logprob(9, "z", -3.0),
                                  (Logprob(1, "a", -0.1), Logprob(2, "b", -0.5)))
    assert token_logprobs([9], None, 2) == ()
    assert json.dumps(token_logprobs([1], [position], 0)[0].top) == "[]"
