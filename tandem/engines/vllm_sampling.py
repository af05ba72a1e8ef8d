"""tandem's engine-neutral sampling as vLLM's ``SamplingParams``, and vLLM's per-token log
probabilities as tandem's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tandem.engines.base import Logprob, Sampling, StructuredOutput, TokenLogprobs
from tandem.kvconnector.settings import TRANSFER_PARAMS_KEY

FORCED_OUTPUT_KEY = "tandem_forced_output"
"""The key of ``SamplingParams.extra_args`` that carries a request's forced output."""
FORCED_OUTPUT_PROCESSOR = "tandem.engines.vllm_forced:ForcedOutput"
"""The logits processor that produces it, by the qualified name vLLM loads it from."""


def sampling_params(sampling: Sampling, room: int, kv_transfer: Mapping[str, Any] | None = None,
                    forced_output: tuple[int, ...] = ()) -> Any:
    """vLLM's parameters for a request with ``room`` tokens left in the context. A forced
    output (see ``vllm_forced``) is generated first and counts against max_tokens and
    min_tokens like any output."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    forced = len(forced_output)
    max_tokens = room if sampling.max_tokens is None else min(sampling.max_tokens + forced, room)
    extra: dict[str, Any] = {}
    if sampling.top_k:
        extra["top_k"] = sampling.top_k
    if sampling.presence_penalty is not None:
        extra["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty is not None:
        extra["frequency_penalty"] = sampling.frequency_penalty
    if sampling.min_tokens:
        extra["min_tokens"] = min(sampling.min_tokens + forced, max_tokens)
    if sampling.logit_bias:
        extra["logit_bias"] = dict(sampling.logit_bias)
    if sampling.logprobs is not None:
        extra["logprobs"] = sampling.logprobs
    if sampling.prompt_logprobs is not None:
        extra["prompt_logprobs"] = sampling.prompt_logprobs
    if sampling.structured_output is not None:
        extra["structured_outputs"] = structured_outputs(sampling.structured_output)
    extra_args: dict[str, Any] = {}
    if kv_transfer:
        extra_args["kv_transfer_params"] = {TRANSFER_PARAMS_KEY: dict(kv_transfer)}
    if forced_output:
        extra_args[FORCED_OUTPUT_KEY] = list(forced_output)
    return SamplingParams(
        n=1,
        max_tokens=max_tokens,
        temperature=1.0 if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        seed=sampling.seed,
        stop=list(sampling.stop) or None,
        stop_token_ids=list(sampling.stop_token_ids) or None,
        ignore_eos=sampling.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra_args or None,
        **extra,
    )


def structured_outputs(structured: StructuredOutput) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if structured.kind == "json_schema":
        return StructuredOutputsParams(json=json.loads(str(structured.value)))
    if structured.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if structured.kind == "choice":
        return StructuredOutputsParams(choice=list(structured.value))
    if structured.kind == "regex":
        return StructuredOutputsParams(regex=str(structured.value))
    return StructuredOutputsParams(grammar=str(structured.value))


def token_logprobs(token_ids: Iterable[int], positions: Iterable[Mapping[int, Any]] | None,
                   wanted: int) -> tuple[TokenLogprobs, ...]:
    """One entry per sampled token from vLLM's per-position ``{token id: Logprob}`` (the
    sampled token and the ``wanted`` most likely, by rank)."""
    if positions is None:
        return ()
    entries = []
    for token_id, position in zip(token_ids, positions, strict=False):
        sampled = position[token_id]
        ranked = sorted(position.items(), key=lambda item: item[1].rank or 0)
        entries.append(TokenLogprobs(
            _logprob(token_id, sampled),
            tuple(_logprob(tid, lp) for tid, lp in ranked
                  if lp.rank is not None and lp.rank <= wanted)[:wanted]))
    return tuple(entries)


def _logprob(token_id: int, logprob: Any) -> Logprob:
    return Logprob(token_id, logprob.decoded_token or "", float(logprob.logprob))


class ForcedOutputCut:
    """Drops a forced output (tokens, their log probabilities and their text) from the front
    of a request's outputs. vLLM may merge several steps into one output when its reader lags,
    so the cut counts tokens, and characters of the forced tokens' text (``forced_text``)."""

    def __init__(self, forced_tokens: int, forced_text: str) -> None:
        self.tokens = forced_tokens
        self.chars = len(forced_text)

    def cut(self, token_ids: list[int], text: str,
            logprobs: list[Any] | None) -> tuple[list[int], str, list[Any] | None]:
        if self.tokens:
            skip = min(self.tokens, len(token_ids))
            self.tokens -= skip
            token_ids = token_ids[skip:]
            logprobs = logprobs[skip:] if logprobs is not None else None
        if self.chars:
            skip = min(self.chars, len(text))
            self.chars -= skip
            text = text[skip:]
            if not self.tokens and not token_ids:
                self.chars = 0  # the forced text was shorter than estimated: nothing left
        return token_ids, text, logprobs


def forced_text(tokenizer: Any, prompt: list[int], forced: tuple[int, ...],
                context: int = 8) -> str:
    """The text vLLM's incremental detokenizer gives the forced tokens after the prompt (the
    prompt's last ``context`` tokens stand for its context)."""
    tail = list(prompt[-context:])
    before = tokenizer.decode(tail, skip_special_tokens=True)
    after = tokenizer.decode(tail + list(forced), skip_special_tokens=True)
    return str(after[len(before):]) if after.startswith(before) else str(
        tokenizer.decode(list(forced), skip_special_tokens=True))
