"""The performance model of one worker, from the mock engine's fitted step-time profiles
(``tandem/engines/mock/profiles``): seconds to prefill a prompt, seconds of one decode step."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tandem.engines.mock.perf import PerfProfile


@dataclasses.dataclass(frozen=True)
class PerformanceModel:
    """Step times of one worker as its profile fits them (see ``PerfProfile``)."""

    profile: PerfProfile

    @property
    def max_num_seqs(self) -> int:
        return self.profile.max_num_seqs

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache one worker holds."""
        return self.profile.num_blocks * self.profile.block_size

    def prefill_s(self, uncached: float, cached: float = 0.0) -> float:
        """Seconds to prefill ``uncached`` prompt tokens after ``cached`` ones found in a
        prefix cache, alone on a worker: chunks of the step budget, each a step."""
        p = self.profile
        if uncached <= 0:
            return p.step_overhead_s
        budget = p.max_num_batched_tokens
        steps = math.ceil(uncached / budget)
        attended = uncached * (cached + uncached / 2)  # Σ chunk·(start + chunk/2), exactly
        return (
            steps * p.step_overhead_s
            + p.prefill_token_s * uncached
            + p.prefill_attention_s * attended
        )

    def prefill_s_array(self, uncached: np.ndarray, cached: np.ndarray) -> np.ndarray:
        """``prefill_s`` of many prompts at once."""
        p = self.profile
        steps = np.maximum(np.ceil(uncached / p.max_num_batched_tokens), 1)
        attended = uncached * (cached + uncached / 2)
        return (
            steps * p.step_overhead_s
            + p.prefill_token_s * uncached
            + p.prefill_attention_s * attended
        )

    def decode_step_s(self, batch: float, context_sum: float) -> float:
        """Seconds of one decode step of ``batch`` sequences holding ``context_sum`` tokens."""
        if batch <= 0:
            return 0.0
        p = self.profile
        return (
            p.step_overhead_s
            + p.decode_step_s
            + p.decode_seq_s * batch
            + p.decode_context_s * context_sum
        )

    def decode_fixed_s(self) -> float:
        """The part of a decode step that does not grow with the batch."""
        return self.profile.step_overhead_s + self.profile.decode_step_s

    def decode_per_seq_s(self, mean_context: float) -> float:
        """What one more sequence of ``mean_context`` tokens adds to a decode step."""
        return self.profile.decode_seq_s + self.profile.decode_context_s * mean_context
