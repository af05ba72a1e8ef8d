"""The simulated engine's scheduler, without a clock: continuous batching with a token budget,
chunked prefill, prefix caching and preemption, in the manner of vLLM's v1 scheduler.

``step()`` runs one engine step and returns what it produced and how long the performance
model says it took; the asyncio engine sleeps that long, the discrete-event simulator advances
its virtual clock by it. No I/O, no time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from array import array
from collections import deque

from tandem.engines.mock.blocks import BlockPool, KVEventSink
from tandem.engines.mock.perf import PerfProfile
from tandem.hashing import block_hashes, extend_hashes


@dataclasses.dataclass(frozen=True)
class CoreLimits:
    """Capacities of one simulated worker."""

    block_size: int
    num_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclasses.dataclass
class SimRequest:
    """One request inside the simulated engine."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    stop_token_ids: frozenset[int]
    rng: random.Random
    hashes: list[bytes]
    """Chained hashes of the full blocks of prompt + output known so far."""
    output: list[int] = dataclasses.field(default_factory=list)
    min_tokens: int = 0
    """Tokens generated before a stop token may end the request."""
    blocks: list[int] = dataclasses.field(default_factory=list)
    num_computed: int = 0
    committed_blocks: int = 0
    cached_tokens: int = -1
    """Prompt tokens found in the prefix cache at first admission (-1 until admitted)."""
    loaded_tokens: int = 0
    """Leading prompt tokens whose KV came from the KV store (not computed here)."""
    finish_reason: str | None = None
    salt: bytes = b""
    """Root of the request's block hash chain (its tenant's salt, else the engine's)."""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token(self, position: int) -> int:
        prompt_len = len(self.prompt)
        if position < prompt_len:
            return self.prompt[position]
        return self.output[position - prompt_len]


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """What one request got from a step: new tokens and, on its last step, why it ended."""

    request_id: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    cached_tokens: int


@dataclasses.dataclass(frozen=True)
class StepResult:
    duration_s: float
    outputs: list[StepOutput]
    prefill_tokens: int
    decode_tokens: int
    scheduled: tuple[tuple[str, int], ...] = ()
    """(request id, tokens computed for it) of every request in the step."""


def token_rng(prompt: list[int], seed: int | None, engine_seed: int, greedy: bool) -> random.Random:
    """Deterministic tokens: greedy requests depend on the prompt alone, seeded ones on the
    prompt and the seed; others get a fresh stream."""
    if not greedy and seed is None:
        return random.Random()
    digest = hashlib.blake2b(array("I", prompt).tobytes(), digest_size=8)
    digest.update(f"{engine_seed}:{seed if not greedy else 'greedy'}".encode())
    return random.Random(int.from_bytes(digest.digest(), "little"))


class MockCore:
    """Requests in, steps out. ``sink`` receives the KV events of the block pool."""

    def __init__(
        self, limits: CoreLimits, profile: PerfProfile, salt: bytes, vocab_size: int,
        eos_token_id: int, enable_prefix_caching: bool = True, sink: KVEventSink | None = None,
    ) -> None:
        self.limits = limits
        self.profile = profile
        self.salt = salt
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(limits.num_blocks, sink)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.requests: dict[str, SimRequest] = {}

    def add(
        self, request_id: str, prompt: list[int], max_tokens: int | None,
        stop_token_ids: tuple[int, ...], ignore_eos: bool, rng: random.Random,
        loaded_tokens: int = 0, min_tokens: int = 0, salt: bytes | None = None,
    ) -> StepOutput | None:
        """Queues a request; returns an immediate final output when it can never run.
        ``loaded_tokens``: leading prompt tokens whose KV was loaded from the KV store.
        ``salt``: the request's (its tenant's; None: the engine's), as vLLM's ``cache_salt``:
        requests of different salts never share a cached block."""
        salt = self.salt if salt is None else salt
        capacity = min(self.limits.max_model_len,
                       self.limits.num_blocks * self.limits.block_size)
        limit = capacity - len(prompt)
        blocks_needed = -(-(len(prompt) + 1) // self.limits.block_size)
        if not prompt or limit <= 0 or blocks_needed > self.limits.num_blocks:
            return StepOutput(request_id, [], "error", len(prompt), 0)
        stops = set(stop_token_ids)
        if not ignore_eos:
            stops.add(self.eos_token_id)
        request = SimRequest(
            request_id, list(prompt), min(max_tokens or limit, limit), frozenset(stops), rng,
            block_hashes(prompt, self.limits.block_size, salt), loaded_tokens=loaded_tokens,
            min_tokens=min_tokens, salt=salt,
        )
        self.requests[request_id] = request
        self.waiting.append(request)
        return None

    def abort(self, request_id: str) -> None:
        """Drops a request wherever it is and frees its blocks."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._free(request)
        self.pool.flush()

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _free(self, request: SimRequest) -> None:
        self.pool.release(request.blocks)
        request.blocks = []
        request.num_computed = 0
        request.committed_blocks = 0

    def _grow(self, request: SimRequest, num_tokens: int) -> bool:
        """Allocates blocks so that ``num_tokens`` tokens of ``request`` fit."""
        needed = -(-num_tokens // self.limits.block_size) - len(request.blocks)
        if needed > self.pool.free_blocks:
            return False
        for _ in range(needed):
            block = self.pool.allocate()
            assert block is not None
            request.blocks.append(block)
        return True

    def _preempt_last(self) -> SimRequest:
        victim = self.running.pop()
        self._free(victim)
        self.waiting.appendleft(victim)
        return victim

    def _admit(self, request: SimRequest) -> None:
        """First look at the prefix cache for a request that holds no blocks."""
        cached = 0
        if self.enable_prefix_caching:
            cached = self.pool.cached_prefix(request.hashes)
            # At least one token must be computed to produce logits.
            if cached * self.limits.block_size >= request.num_tokens:
                cached -= 1
            request.blocks = self.pool.acquire_cached(request.hashes[:cached])
        # At least the last token is computed, loaded or not (the engine needs its logits).
        loaded = min(request.loaded_tokens, request.num_tokens - 1)
        request.num_computed = max(cached * self.limits.block_size, loaded)
        request.committed_blocks = cached
        if request.cached_tokens < 0:
            request.cached_tokens = min(request.num_computed, len(request.prompt))

    def _schedule(self) -> list[tuple[SimRequest, int]]:
        budget = self.limits.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            count = min(request.num_tokens - request.num_computed, budget)
            while not self._grow(request, request.num_computed + count):
                preempted = True
                if self._preempt_last() is request:
                    break
            else:
                scheduled.append((request, count))
                budget -= count
                index += 1
                continue
            break
        while (not preempted and self.waiting and budget > 0
               and len(self.running) < self.limits.max_num_seqs):
            request = self.waiting[0]
            if not request.blocks:
                self._admit(request)
            count = min(request.num_tokens - request.num_computed, budget)
            if not self._grow(request, request.num_computed + count):
                self._free(request)
                if not request.output:
                    request.cached_tokens = -1
                break
            self.waiting.popleft()
            self.running.append(request)
            scheduled.append((request, count))
            budget -= count
        return scheduled

    def _commit_full_blocks(self, request: SimRequest) -> None:
        full = request.num_computed // self.limits.block_size
        if full <= request.committed_blocks:
            return
        block_size = self.limits.block_size
        while len(request.hashes) < full:  # output blocks: extend the chain
            start = len(request.hashes) * block_size
            parent = request.hashes[-1] if request.hashes else request.salt
            tokens = [request.token(p) for p in range(start, start + block_size)]
            request.hashes.extend(extend_hashes(parent, tokens, block_size))
        first = request.committed_blocks
        parent = request.hashes[first - 1] if first else b""
        self.pool.commit(request.blocks[first:full], request.hashes[first:full], parent)
        request.committed_blocks = full

    def _sample(self, request: SimRequest) -> StepOutput:
        token = request.rng.randrange(self.vocab_size)
        request.output.append(token)
        if token in request.stop_token_ids and len(request.output) > request.min_tokens:
            request.finish_reason = "stop"
        elif (len(request.output) >= request.max_tokens
              or request.num_tokens >= self.limits.max_model_len):
            request.finish_reason = "length"
        return StepOutput(request.request_id, [token], request.finish_reason,
                          len(request.prompt), request.cached_tokens)

    def step(self) -> StepResult:
        """One engine step: schedule, account the time, advance, sample, finish."""
        scheduled = self._schedule()
        prefill_chunks: list[tuple[int, int]] = []
        decode_contexts: list[int] = []
        for request, count in scheduled:
            if count == 1 and request.num_computed >= len(request.prompt):
                decode_contexts.append(request.num_computed)
            else:
                prefill_chunks.append((count, request.num_computed))
        outputs: list[StepOutput] = []
        for request, count in scheduled:
            request.num_computed += count
            if self.enable_prefix_caching:
                self._commit_full_blocks(request)
            if request.num_computed < request.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            outputs.append(self._sample(request))
            if request.finish_reason is not None:
                self.running.remove(request)
                del self.requests[request.request_id]
                self._free(request)
        self.pool.flush()
        duration = self.profile.step_time(prefill_chunks, decode_contexts)
        return StepResult(duration, outputs, sum(c for c, _ in prefill_chunks),
                          len(decode_contexts),
                          tuple((request.request_id, count) for request, count in scheduled))
