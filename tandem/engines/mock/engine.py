"""``MockEngine``: the simulated engine behind the ``Engine`` interface, in real (or
compressed) time. Every response says ``mock-simulated`` in its fingerprint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence

from tandem.engines.base import Engine, EngineLoad, EngineOutput, EngineRequest, Sampling
from tandem.engines.mock.blocks import KVEventSink
from tandem.engines.mock.core import CoreLimits, MockCore, StepOutput, StepResult, token_rng
from tandem.engines.mock.perf import PerfProfile, fixed_profile, load_profile
from tandem.engines.mock.settings import MockSettings
from tandem.engines.mock.stop_strings import StopStrings
from tandem.engines.mock.transfer import DEFAULT_BLOCK_BYTES, MockKVTransfer
from tandem.engines.step_trace import (
    EngineStep,
    RequestTrace,
    StepTraceSettings,
    start_request_trace,
)
from tandem.errors import TandemError
from tandem.hashing import hash_salt, salt_from_text
from tandem.v1 import common_pb2

log = logging.getLogger(__name__)

_DEFAULT_BLOCK_SIZE = 16
_DEFAULT_NUM_BLOCKS = 4096
_DEFAULT_MAX_NUM_SEQS = 256
_DEFAULT_MAX_BATCHED_TOKENS = 2048


def resolve_profile(settings: MockSettings) -> PerfProfile:
    """The settings' hardware profile, or fixed per-token times when none is named."""
    if settings.profile:
        return load_profile(settings.profile)
    return fixed_profile(settings.prefill_time_per_token_s, settings.decode_time_per_step_s)


def resolve_limits(settings: MockSettings, profile: PerfProfile) -> CoreLimits:
    """Capacities: explicit settings first, then the profile's (when one is named)."""
    named = bool(settings.profile)
    return CoreLimits(
        block_size=settings.block_size or (profile.block_size if named else _DEFAULT_BLOCK_SIZE),
        num_blocks=settings.num_blocks or (profile.num_blocks if named else _DEFAULT_NUM_BLOCKS),
        max_num_seqs=settings.max_num_seqs
        or (profile.max_num_seqs if named else _DEFAULT_MAX_NUM_SEQS),
        max_num_batched_tokens=settings.max_num_batched_tokens
        or (profile.max_num_batched_tokens if named else _DEFAULT_MAX_BATCHED_TOKENS),
        max_model_len=settings.max_model_len,
    )


def block_bytes(settings: MockSettings, profile: PerfProfile, block_size: int) -> int:
    """Bytes of one block in the KV store: the setting, else the profile's KV size."""
    if settings.kv_block_bytes:
        return settings.kv_block_bytes
    return profile.kv_bytes_per_token * block_size or DEFAULT_BLOCK_BYTES


def token_text(token_id: int) -> str:
    """The simulated detokenization of one token."""
    return f" tok{token_id}"


class MockEngine(Engine):
    """A simulated vLLM-like worker. ``kv_event_sink`` (or ``set_kv_event_sink``) receives
    ``(type, hashes, parent)`` for every block stored, evicted, or a full clear."""

    def __init__(
        self, settings: MockSettings | None = None, kv_event_sink: KVEventSink | None = None
    ) -> None:
        self.settings = settings or MockSettings()
        self.settings.validate()
        self.profile = resolve_profile(self.settings)
        self.limits = resolve_limits(self.settings, self.profile)
        self.fingerprint = f"mock-simulated:{self.profile.name}"
        self.block_size = self.limits.block_size
        self.max_model_len = self.limits.max_model_len
        self.max_num_seqs = self.limits.max_num_seqs
        self._sink: KVEventSink | None = kv_event_sink
        self.core = MockCore(
            self.limits, self.profile,
            hash_salt(self.settings.model if self.settings.hash_blocks_with_model else ""),
            self.settings.vocab_size, self.settings.eos_token_id,
            self.settings.enable_prefix_caching, self._emit,
        )
        self._queues: dict[str, asyncio.Queue[StepOutput]] = {}
        self._traces: dict[str, RequestTrace] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = 0
        self.transfer: MockKVTransfer | None = None
        self.fail_rate = self.settings.fail_rate
        """Fraction of requests that fail (``MockSettings.fail_rate``); tests change it while
        the engine runs."""
        self.injected_failures = 0
        """Requests failed by ``fail_rate`` so far."""
        self._fail_rng = random.Random(self.settings.seed)
        self._first_request = True

    def set_kv_event_sink(self, sink: KVEventSink | None) -> bool:
        """Where KV events go from now on (a ``KVEventPublisher.publish``, for instance)."""
        self._sink = sink
        return True

    def _emit(self, event_type: str, hashes: list[bytes], parent: bytes) -> None:
        if self._sink is not None:
            self._sink(event_type, hashes, parent)

    def dump_kv_state(self) -> list[bytes]:
        """Hashes of every block cached on the simulated device, parents before children."""
        return list(self.core.pool.cached_hashes())

    async def start(self) -> None:
        if self.settings.kvstore_address and self.transfer is None:
            transfer = MockKVTransfer(
                self.settings.kvstore_address, self.block_size,
                block_bytes(self.settings, self.profile, self.block_size), self.core.salt,
                self.settings.kvstore_host_id, self.settings.kvstore_tls)
            await transfer.connect()
            self.transfer = transfer
        if self._task is None:
            self._emit("cleared", [], b"")  # a (re)started worker holds nothing
            self._task = asyncio.create_task(self._run(), name="mock-engine")

    async def _run(self) -> None:
        speedup = self.settings.speedup
        while True:
            if not self.core.has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            result = self.core.step()
            self.steps += 1
            await asyncio.sleep(result.duration_s / speedup)
            if self._traces:
                self._trace_step(result, result.duration_s / speedup)
            for output in result.outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)

    def _trace_step(self, result: StepResult, wall_s: float) -> None:
        """Step events for the traced requests in the step (the same shape as vLLM's)."""
        step = EngineStep(
            index=self.steps, batch_size=len(result.scheduled), waiting=len(self.core.waiting),
            prompt_tokens=result.prefill_tokens, decode_tokens=result.decode_tokens,
            output_tokens=len(result.outputs), time_ns=time.time_ns(), duration_s=wall_s)
        produced = {output.request_id: len(output.token_ids) for output in result.outputs}
        for request_id, count in result.scheduled:
            request_trace = self._traces.get(request_id)
            if request_trace is not None:
                request_trace.step(step, produced.get(request_id, 0), count)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._task is None:
            raise RuntimeError("MockEngine.start() was not awaited")
        sampling = request.sampling
        request_id = request.request_id
        if request_id in self._queues:
            raise ValueError(f"duplicate request id {request_id!r}")
        self._maybe_fail()
        greedy = sampling.temperature == 0
        rng = token_rng(request.prompt_token_ids, sampling.seed, self.settings.seed, greedy)
        queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        # Loaded before the request is scheduled, as vLLM's connector loads before the step.
        loaded = await self.transfer.load(request) if self.transfer is not None else 0
        immediate = self.core.add(
            request_id, list(request.prompt_token_ids), sampling.max_tokens,
            sampling.stop_token_ids, sampling.ignore_eos, rng, loaded, sampling.min_tokens or 0,
            salt_from_text((request.kv_transfer or {}).get("salt")),
        )
        if immediate is not None:
            yield EngineOutput([], "", immediate.finish_reason, immediate.prompt_tokens, 0)
            return
        self._queues[request_id] = queue
        request_trace = start_request_trace(request, self.settings.model, self.fingerprint,
                                            StepTraceSettings())
        if request_trace is not None:
            self._traces[request_id] = request_trace
        self._wakeup.set()
        finish_reason: str | None = None
        transfer = self.transfer
        stops = StopStrings(sampling.stop)
        try:
            while finish_reason is None:
                output = await queue.get()
                finish_reason = output.finish_reason
                if transfer is not None and output.token_ids:
                    # Stored before the first token leaves: a handle never precedes its blocks.
                    await transfer.save(request)
                    transfer = None
                text, stopped = stops.next(self.detokenize([], output.token_ids),
                                           finish_reason is not None)
                if stopped:
                    self.core.abort(request_id)
                    finish_reason = "stop"
                yield EngineOutput(
                    output.token_ids, text, finish_reason, output.prompt_tokens,
                    output.cached_tokens,
                )
        finally:
            self._queues.pop(request_id, None)
            if request_trace is not None:
                del self._traces[request_id]
                request_trace.finish(finish_reason)
            if finish_reason is None:
                self.core.abort(request_id)

    def detokenize(self, context: Sequence[int], token_ids: Sequence[int]) -> str:
        return "".join(token_text(t) for t in token_ids)

    def _maybe_fail(self) -> None:
        """The injected failure (``fail_rate``), never on the first request (the canary)."""
        first, self._first_request = self._first_request, False
        if not first and self.fail_rate and self._fail_rng.random() < self.fail_rate:
            self.injected_failures += 1
            raise TandemError(common_pb2.ERROR_CODE_INTERNAL,
                              f"mock engine: injected failure (fail rate {self.fail_rate})")

    def unsupported(self, sampling: Sampling) -> str | None:
        """Its tokens are random draws, not a model's: it has no log probabilities, logits to
        bias, or text that could satisfy a structured output constraint, and says so rather
        than pretend. (min_tokens, stop_token_ids and ignore_eos it honours.)"""
        if sampling.structured_output is not None:
            return "response_format"
        if sampling.logprobs is not None or sampling.prompt_logprobs is not None:
            return "logprobs"
        if sampling.logit_bias:
            return "logit_bias"
        return None

    def load(self) -> EngineLoad:
        core = self.core
        return EngineLoad(
            running=len(core.running), waiting=len(core.waiting),
            used_blocks=core.pool.used_blocks, total_blocks=core.pool.num_blocks,
            block_size=self.block_size,
            kvstore_connected=None if self.transfer is None else self.transfer.connected,
        )

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for request_id in list(self.core.requests):
            self.core.abort(request_id)
        for request_id, queue in list(self._queues.items()):
            queue.put_nowait(StepOutput(request_id, [], "abort", 0, 0))
        if self.transfer is not None:
            await self.transfer.close()
            self.transfer = None
