"""Step-time performance model of a simulated engine, with parameters per hardware profile.

One engine step runs a batch of prefill chunks and decode tokens. Its time is modelled as

    t = step_overhead_s
      + prefill_token_s   · (prefill tokens in the step)
      + prefill_attention_s · Σ_chunks chunk_len · (chunk_start + chunk_len / 2)
      + decode_step_s     · (1 if anything decodes in the step)
      + decode_seq_s      · (decoding sequences in the step)
      + decode_context_s  · Σ_decoding context length

i.e. linear work per token (weights, MLP), attention work proportional to the context each new
token attends to, and a fixed per-step cost (launches, scheduling, or reading the weights once
on a memory-bound GPU). ``bench/fit_mock_profile.py`` fits the coefficients to the real engine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orjson

PROFILE_DIR = Path(__file__).parent / "profiles"


@dataclasses.dataclass(frozen=True)
class PerfProfile:
    """Coefficients of the step-time model and the capacities of the simulated hardware."""

    name: str
    """Profile name (the JSON file's stem)."""
    description: str = ""
    """Hardware, model and engine configuration the profile stands for."""
    source: str = ""
    """Where the figures come from (measurement command, or citations of published figures)."""
    step_overhead_s: float = 0.0
    """Fixed seconds per step."""
    prefill_token_s: float = 0.0
    """Seconds per prefill token."""
    prefill_attention_s: float = 0.0
    """Seconds per (prefill token x context token attended)."""
    decode_step_s: float = 0.0
    """Seconds added once to a step in which anything decodes."""
    decode_seq_s: float = 0.0
    """Seconds per decoding sequence in the step."""
    decode_context_s: float = 0.0
    """Seconds per context token of the decoding sequences."""
    block_size: int = 16
    """Tokens per KV block."""
    num_blocks: int = 4096
    """KV blocks the device holds."""
    max_num_seqs: int = 256
    """Most sequences running at once."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step."""
    kv_bytes_per_token: int = 0
    """KV cache bytes of one token, all layers (the size of a block in the KV store); 0:
    unknown."""
    fit: dict[str, float] = dataclasses.field(default_factory=dict)
    """Quality of the fit (e.g. relative error), informational."""

    def step_time(
        self, prefill_chunks: list[tuple[int, int]], decode_contexts: list[int]
    ) -> float:
        """Seconds for one step: ``prefill_chunks`` as (chunk_len, chunk_start) pairs,
        ``decode_contexts`` as the context length of each decoding sequence."""
        if not prefill_chunks and not decode_contexts:
            return 0.0
        prefill_tokens = 0
        attended = 0.0
        for chunk_len, chunk_start in prefill_chunks:
            prefill_tokens += chunk_len
            attended += chunk_len * (chunk_start + chunk_len / 2)
        return (
            self.step_overhead_s
            + self.prefill_token_s * prefill_tokens
            + self.prefill_attention_s * attended
            + (self.decode_step_s if decode_contexts else 0.0)
            + self.decode_seq_s * len(decode_contexts)
            + self.decode_context_s * sum(decode_contexts)
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def fixed_profile(prefill_time_per_token_s: float, decode_time_per_step_s: float) -> PerfProfile:
    """A profile without hardware: a fixed time per prefill token and per decode step."""
    return PerfProfile(
        name="fixed", description="fixed per-token prefill and per-step decode times",
        prefill_token_s=prefill_time_per_token_s, decode_step_s=decode_time_per_step_s,
    )


def load_profile(name_or_path: str) -> PerfProfile:
    """A profile by name (``profiles/<name>.json``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    data = orjson.loads(path.read_bytes())
    fields = {field.name for field in dataclasses.fields(PerfProfile)}
    return PerfProfile(**{key: value for key, value in data.items() if key in fields})


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.json"))
