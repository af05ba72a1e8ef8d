"""A vLLM logits processor that makes a request produce given tokens first: the output a
prefill worker (or a lost decode worker) generated before, replayed on the decode worker so
that a structured output constraint continues where it stood (vLLM's grammar advances on a
request's output tokens only; the same tokens read as prompt would restart it). The engine
adapter drops the replayed tokens from what it returns.

The tokens ride ``SamplingParams.extra_args[FORCED_OUTPUT_KEY]``; loaded by the engine core by
its qualified name (``vllm_sampling.FORCED_OUTPUT_PROCESSOR``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from tandem.engines.vllm_sampling import FORCED_OUTPUT_KEY


class ForcedOutput(LogitsProcessor):
    """While a request has produced fewer tokens than its forced output, every logit but the
    next forced token's is -inf."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.forced: dict[int, tuple[Sequence[int], list[int]]] = {}
        """Batch index → (tokens to force, the request's live output token list)."""

    @staticmethod
    def _state(params: Any, _prompt: list[int] | None,
               output: list[int]) -> tuple[Sequence[int], list[int]] | None:
        forced = (params.extra_args or {}).get(FORCED_OUTPUT_KEY)
        return (tuple(forced), output) if forced else None

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.forced, batch_update, self._state)
        for index in [i for i, (forced, output) in self.forced.items()
                      if len(output) >= len(forced)]:
            del self.forced[index]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, (forced, output) in self.forced.items():
            if len(output) < len(forced):
                token = forced[len(output)]
                row = logits[index]
                kept = row[token].clone()
                row.fill_(float("-inf"))
                row[token] = kept if torch.isfinite(kept) else 0.0
        return logits
