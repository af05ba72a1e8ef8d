"""Settings of the simulated (``mock``) engine."""

from __future__ import annotations

import dataclasses

from tandem.service.tls import TlsSettings


@dataclasses.dataclass(frozen=True)
class MockSettings:
    """A simulated vLLM-like worker: paged KV blocks, prefix cache, continuous batching."""

    model: str = "SmolLM2-135M-Instruct"
    """Model name the simulated worker claims to serve (also salts its block hashes)."""
    profile: str = ""
    """Hardware profile: a name under tandem/engines/mock/profiles/ (e.g. "cpu-smollm2-135m",
    "h100-llama3-70b") or a path to a profile JSON. Empty: the fixed per-token times below."""
    prefill_time_per_token_s: float = 0.0
    """Without a profile: seconds of prefill per prompt token computed (not cached)."""
    decode_time_per_step_s: float = 0.0
    """Without a profile: seconds per engine step that decodes (one token per running request)."""
    speedup: float = 1.0
    """Simulated time runs this many times faster than the wall clock (sleeps are divided)."""
    block_size: int = 0
    """Tokens per KV block; 0 takes the profile's figure (or 16 without one)."""
    num_blocks: int = 0
    """KV blocks on the simulated device; 0 takes the profile's figure (or 4096 without one)."""
    max_model_len: int = 8192
    """Maximum prompt + completion tokens."""
    max_num_seqs: int = 0
    """Most requests running at once; 0 takes the profile's figure (or 256)."""
    max_num_batched_tokens: int = 0
    """Token budget of one engine step (decode tokens + prefill chunks); 0 takes the profile's
    figure (or 2048)."""
    vocab_size: int = 49152
    """Token ids are drawn from [0, vocab_size)."""
    eos_token_id: int = 0
    """End-of-sequence token: ends generation with "stop" unless ignore_eos is set."""
    seed: int = 0
    """Mixed into every request's token stream (same seed + prompt = same tokens)."""
    enable_prefix_caching: bool = True
    """Reuse cached blocks whose chained hash matches a prompt's leading blocks."""
    hash_blocks_with_model: bool = True
    """Salt block hashes with the model name (as the router does for the default tenant)."""
    kvstore_address: str | None = None
    """KV store (host:port) that a prefill writes the prompt's blocks to and a hand-off (a
    request with a KV handle) reads them from, for real, through tandem's KV client; unset:
    no transfer (a handle's blocks count as computed here)."""
    kvstore_host_id: str = ""
    """Host identity compared with the KV store's (unset: hostname); see the worker's
    --kv-host-id."""
    kvstore_tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    """TLS of the calls to the KV store (the worker's --tls-* settings)."""
    kv_block_bytes: int = 0
    """Bytes of one KV block in the store; 0: the profile's ``kv_bytes_per_token`` x block
    size, or 4 KiB without either."""

    fail_rate: float = 0.0
    """Fraction of requests, after the first (the worker's canary), that fail with an engine
    error before their first token (fault tests)."""

    def validate(self) -> None:
        if self.block_size < 0:
            raise ValueError("block_size must not be negative")
        if self.speedup <= 0:
            raise ValueError("speedup must be positive")
        if min(self.prefill_time_per_token_s, self.decode_time_per_step_s) < 0:
            raise ValueError("simulated times must not be negative")
        if self.num_blocks < 0 or self.max_num_seqs < 0 or self.max_num_batched_tokens < 0 \
                or self.kv_block_bytes < 0:
            raise ValueError("capacities must not be negative")
        if not 0 <= self.fail_rate <= 1:
            raise ValueError("fail_rate must be within [0, 1]")
