"""Which prompt blocks a request loads from the KV store and which it saves, step by step.

Pure bookkeeping, no vLLM and no I/O: the connector feeds it what the scheduler decided and
turns its answers into transfers. Prompt blocks move, never generated tokens: whole blocks
(shared by every prompt with the same prefix) and, for a prefill hand-off, the prompt's partial
last block (its own content hash, tandem/hashing.py ``tail_hash``), so the decode worker holds
the prompt's KV exactly as the prefill computed it and computes only the token after it.
"""

from __future__ import annotations

import dataclasses


def loadable_blocks(prompt_tokens: int, block_size: int) -> int:
    """Most leading blocks a request may load: the engine must compute at least the last prompt
    token itself to produce the logits of the first output token."""
    return max(0, prompt_tokens - 1) // block_size


def external_tokens(present_blocks: int, computed_tokens: int, prompt_tokens: int,
                    block_size: int, covered_tokens: int | None = None) -> int:
    """Tokens to load beyond what the engine already holds (its own prefix cache).

    ``covered_tokens``: how many tokens the chain's blocks cover (its last block may be a
    partial tail); default: whole blocks only. The last prompt token is always computed (its
    logits give the next token), so a load covers at most the tokens before it: the block that
    holds the last token loads too, and the engine computes that token's KV over the loaded
    one (the same values). A structured hand-off replays the prefill's first token as output
    instead of extending the prompt, so its decode request's last prompt token lies in the
    stored tail: every token before it loads."""
    covered = present_blocks * block_size
    if covered_tokens is not None:
        covered = min(covered, covered_tokens)
    covered = min(covered, prompt_tokens - 1)
    return max(0, covered - computed_tokens)


@dataclasses.dataclass(frozen=True)
class BlockRun:
    """Consecutive blocks of one request: store hashes and the engine's block ids."""

    request_id: str
    hashes: tuple[bytes, ...]
    block_ids: tuple[int, ...]
    parent: bytes
    """Hash of the block before the first one (the chain's salt for block 0)."""


@dataclasses.dataclass
class RequestPlan:
    """Transfer state of one request on the scheduler side."""

    request_id: str
    hashes: list[bytes]
    """Store hashes of the prompt's blocks: whole blocks, then possibly a partial tail."""
    salt: bytes
    prompt_tokens: int
    block_size: int
    save: bool
    """Whether this engine writes the request's prompt blocks to the store."""
    covered_tokens: int = -1
    """Tokens ``hashes`` cover (-1: whole blocks only, ``len(hashes) * block_size``)."""
    block_ids: list[int] = dataclasses.field(default_factory=list)
    load_from: int = 0
    """First block to load (blocks before it are in the engine's own prefix cache)."""
    load_to: int = 0
    """End of the blocks to load; ``load_from == load_to``: nothing to load."""
    saved: int = 0
    """Leading blocks known to be in the store (saved, loaded, or found there)."""
    load_sent: bool = False

    def __post_init__(self) -> None:
        if self.covered_tokens < 0:
            self.covered_tokens = len(self.hashes) * self.block_size

    def external_tokens(self, present_blocks: int, computed_tokens: int) -> int:
        return external_tokens(present_blocks, computed_tokens, self.prompt_tokens,
                               self.block_size, self.covered_tokens)

    def found_in_store(self, present_blocks: int) -> None:
        """The store holds the chain's first ``present_blocks`` blocks: never saved again."""
        self.saved = max(self.saved, min(present_blocks, len(self.hashes)))

    def plan_load(self, computed_tokens: int, external: int) -> None:
        self.load_from = computed_tokens // self.block_size
        self.load_to = -(-(computed_tokens + external) // self.block_size)  # a tail counts
        self.load_sent = False

    def set_blocks(self, block_ids: list[int]) -> None:
        self.block_ids = list(block_ids)

    def add_blocks(self, block_ids: list[int]) -> None:
        self.block_ids.extend(block_ids)

    def take_load(self) -> BlockRun | None:
        """The blocks to load in this step (once)."""
        if self.load_sent or self.load_to <= self.load_from:
            return None
        if len(self.block_ids) < self.load_to:
            raise ValueError(f"request {self.request_id}: {len(self.block_ids)} blocks "
                             f"allocated, {self.load_to} needed to load")
        self.load_sent = True
        return self._run(self.load_from, self.load_to)

    def take_save(self, computed_after_step: int) -> BlockRun | None:
        """The whole prompt blocks that become complete in this step and are not stored yet."""
        if not self.save:
            return None
        done = min(computed_after_step, self.prompt_tokens, self.covered_tokens)
        complete = done // self.block_size
        if done == self.covered_tokens and done % self.block_size:
            complete += 1  # the partial tail, once every token of it is computed
        complete = min(complete, len(self.hashes), len(self.block_ids))
        if complete <= self.saved:
            return None
        run = self._run(self.saved, complete)
        self.saved = complete
        return run

    def reset_after_preemption(self) -> None:
        """A preempted request lost its blocks; what it saved stays in the store."""
        self.block_ids = []
        self.load_from = self.load_to = 0
        self.load_sent = False

    def _run(self, start: int, end: int) -> BlockRun:
        return BlockRun(
            request_id=self.request_id,
            hashes=tuple(self.hashes[start:end]),
            block_ids=tuple(self.block_ids[start:end]),
            parent=self.hashes[start - 1] if start else self.salt,
        )
