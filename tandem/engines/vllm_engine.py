"""vLLM's async engine (AsyncLLM), in-process: the CPU build, or a GPU build where vLLM finds a
GPU (``vllm_platform`` says what each needs)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tandem.engines.base import (
    Engine,
    EngineLoad,
    EngineOutput,
    EngineRequest,
    KVEventSink,
    TokenLogprobs,
)
from tandem.engines.vllm_kv_events import VllmKVEventBridge
from tandem.engines.vllm_owner import owned_engine_core
from tandem.engines.vllm_platform import current_setup
from tandem.engines.vllm_sampling import (
    FORCED_OUTPUT_PROCESSOR,
    ForcedOutputCut,
    forced_text,
    sampling_params,
    token_logprobs,
)
from tandem.engines.vllm_tracing import StepJournal, VllmTracing, quiet_iteration_log
from tandem.errors import invalid
from tandem.kv_transfers import RequestTransfers, record_transfer_stages
from tandem.kvconnector.settings import (
    CONNECTOR_CLASS,
    CONNECTOR_MODULE,
    ConnectorSettings,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VllmSettings:
    """Settings of one vLLM engine instance."""

    model_dir: str
    """Local model directory (safetensors + tokenizer); never a hub id."""
    served_model_name: str
    """Name clients use for the model."""
    max_model_len: int = 4096
    """Maximum prompt + completion tokens."""
    kv_cache_gib: int = 1
    """KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE on CPU, always set, see DESIGN pitfalls;
    kv_cache_memory_bytes per GPU on a GPU)."""
    cpu_cores: str | None = None
    """CPU cores the CPU build's threads bind to (VLLM_CPU_OMP_THREADS_BIND, e.g. "0" or "0-1");
    unset lets vLLM choose (it binds to core 0). Refused on a GPU."""
    enforce_eager: bool = True
    """Skip graph compilation (engine start ~25 s instead of ~80 s on CPU)."""
    dtype: str = "bfloat16"
    """Weight and activation dtype."""
    max_num_seqs: int = 64
    """Most requests batched in one engine step."""
    max_num_batched_tokens: int | None = None
    """Token budget of one engine step (chunked prefill splits longer prompts); unset: vLLM's."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical prompt prefixes."""
    otlp_traces_endpoint: str | None = None
    """OTLP endpoint for vLLM's own request spans (it joins the trace via trace_headers)."""
    kv_connector: ConnectorSettings | None = None
    """tandem's KV connector (loads and saves prompt blocks through the KV store); unset: the
    engine keeps its KV to itself."""


class _SchedulerSnapshot:
    """Latest scheduler figures, recorded by vLLM's stat-logger hook after every step."""

    running = 0
    waiting = 0
    kv_cache_usage = 0.0


def _stat_logger_factory(snapshot: _SchedulerSnapshot, journal: StepJournal,
                         transfers: RequestTransfers) -> Any:
    from vllm.v1.metrics.loggers import StatLoggerBase

    from tandem.kvconnector.stats import transfers_of

    class SnapshotLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.vllm_config = vllm_config

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                snapshot.running = scheduler_stats.num_running_reqs
                snapshot.waiting = scheduler_stats.num_waiting_reqs
                snapshot.kv_cache_usage = scheduler_stats.kv_cache_usage
                # The connector's transfers of the step; AsyncLLM records a step's stats before
                # its outputs reach the requests' consumers, so a request's last transfer is
                # counted before its generation ends.
                transfers.add(transfers_of(scheduler_stats.kv_connector_stats))
            journal.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            return None

    return SnapshotLogger


_DETOKENIZE_CONTEXT = 6
"""Prompt tokens decoded before a migrated stream's tokens: enough for any byte-level merge or
leading-space rule to see what precedes them (vLLM's incremental detokenizer primes with as
few)."""
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


async def _refusing_invalid(outputs: AsyncIterator[Any],
                            request: EngineRequest) -> AsyncIterator[Any]:
    """vLLM's outputs; a request vLLM refuses before its first output (a schema or grammar it
    cannot compile, a token id outside the vocabulary) is the client's error, not the
    engine's: a TandemError naming the parameter (a 400 at the router)."""
    from vllm.exceptions import VLLMClientError

    iterator = aiter(outputs)
    try:
        first = await anext(iterator)
    except StopAsyncIteration:
        return
    except (VLLMClientError, ValueError) as error:
        param = "response_format" if request.sampling.structured_output is not None \
            else getattr(error, "parameter", None) or ""
        raise invalid(f"the engine refused the request: {error}", param) from None
    yield first
    async for output in iterator:
        yield output


class VllmEngine(Engine):
    """Adapter of vLLM's AsyncLLM to tandem's Engine interface."""

    def __init__(self, settings: VllmSettings) -> None:
        self.settings = settings
        self.platform = current_setup(settings.kv_cache_gib, settings.cpu_cores)
        self.fingerprint = self.platform.fingerprint
        self.max_model_len = settings.max_model_len
        self.max_num_seqs = settings.max_num_seqs
        self.block_size = 0
        self._engine: Any = None
        self._snapshot = _SchedulerSnapshot()
        self._tracing = VllmTracing()
        self._total_blocks = 0
        self._kv_events: VllmKVEventBridge | None = None
        self._transfers = RequestTransfers()

    def set_kv_event_sink(self, sink: KVEventSink | None) -> bool:
        """Bridges vLLM's KV events (call before ``start``: it configures the engine)."""
        if self._kv_events is None:
            if self._engine is not None:
                return False  # started without events: vLLM publishes nothing
            self._kv_events = VllmKVEventBridge(self.settings.served_model_name)
        self._kv_events.sink = sink
        return True

    def dump_kv_state(self) -> list[bytes] | None:
        return None if self._kv_events is None else self._kv_events.cached_hashes()

    async def start(self) -> None:
        if not await asyncio.to_thread(Path(self.settings.model_dir, "config.json").exists):
            raise FileNotFoundError(
                f"no model at {self.settings.model_dir}: run `make model` "
                "(or `python -m tandem.model prepare`)"
            )
        os.environ.update(self.platform.environment)
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self.settings.model_dir,
            served_model_name=self.settings.served_model_name,
            max_model_len=self.settings.max_model_len,
            enforce_eager=self.settings.enforce_eager,
            dtype=self.settings.dtype,  # type: ignore[arg-type]
            max_num_seqs=self.settings.max_num_seqs,
            max_num_batched_tokens=self.settings.max_num_batched_tokens,
            enable_prefix_caching=self.settings.enable_prefix_caching,
            otlp_traces_endpoint=self.settings.otlp_traces_endpoint,
            disable_log_stats=False,
            kv_transfer_config=self._kv_transfer_config(),
            enable_logging_iteration_details=True,  # per-step batch and tokens for traces
            kv_events_config=self._kv_events.open() if self._kv_events else None,
            **self.platform.engine_args,
            logits_processors=[FORCED_OUTPUT_PROCESSOR],
        )
        quiet_iteration_log()
        with owned_engine_core():  # its processes die with this one, whatever kills it
            self._engine = AsyncLLM.from_engine_args(
                args, stat_loggers=[_stat_logger_factory(self._snapshot, self._tracing.journal,
                                                         self._transfers)]
            )
        cache_config = self._engine.vllm_config.cache_config
        self.block_size = int(cache_config.block_size)
        self._total_blocks = int(cache_config.num_gpu_blocks or 0)
        if self._kv_events is not None:
            self._kv_events.start(self.block_size)
        log.info("vllm engine ready", extra={"block_size": self.block_size,
                                             "kv_blocks": self._total_blocks})

    def _kv_transfer_config(self) -> Any:
        connector = self.settings.kv_connector
        if connector is None:
            return None
        from vllm.config import KVTransferConfig

        return KVTransferConfig(
            kv_connector=CONNECTOR_CLASS,
            kv_connector_module_path=CONNECTOR_MODULE,
            kv_role="kv_both",
            kv_connector_extra_config=connector.to_extra_config(),
            # A block evicted between lookup and load is recomputed, never a failed request.
            kv_load_failure_policy="recompute",
        )

    def _transfer_params(self, request: EngineRequest) -> dict[str, Any] | None:
        """The connector's entry of the request's ``kv_transfer_params``: the worker's, with
        the request's id and trace context, so its transfers join its trace and stages."""
        if self.settings.kv_connector is None:
            return None
        return {**(request.kv_transfer or {}), "request_id": request.request_id,
                "trace": dict(request.trace_headers or {})}

    @staticmethod
    def _prompt(request: EngineRequest) -> Any:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))
        salt = (request.kv_transfer or {}).get("salt")
        if salt:  # tenants that never share store blocks never share device blocks either
            prompt["cache_salt"] = salt
        return prompt

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        prompt_tokens = len(request.prompt_token_ids)
        params = sampling_params(request.sampling, self.max_model_len - prompt_tokens,
                                 self._transfer_params(request), request.forced_output)
        forced = ForcedOutputCut(  # replayed first, never returned
            len(request.forced_output),
            forced_text(self._engine.get_tokenizer(), request.prompt_token_ids,
                        request.forced_output)) if request.forced_output else None
        wanted = request.sampling.logprobs or 0
        finished = False
        first = True
        cached: int | None = None
        steps = self._tracing.start(request, self.settings.served_model_name, self.fingerprint)
        reason: str | None = None
        produced = 0
        prompt_logprobs: tuple[TokenLogprobs, ...] = ()  # until an output carries them
        self._transfers.begin(request.request_id)
        try:
            async for output in _refusing_invalid(self._engine.generate(
                self._prompt(request),
                params,
                request.request_id,
                trace_headers=request.trace_headers,
            ), request):
                completion = output.outputs[0]
                if cached is None:  # the engine's first output, even a forced one
                    cached = output.num_cached_tokens or 0
                reason = completion.finish_reason if output.finished else None
                finished = output.finished
                token_ids = list(completion.token_ids)
                text = completion.text
                logprobs = completion.logprobs
                produced += len(token_ids)
                if request.sampling.prompt_logprobs is not None and output.prompt_logprobs:
                    prompt_logprobs = token_logprobs(  # the first prompt token has none
                        request.prompt_token_ids[1:], output.prompt_logprobs[1:],
                        request.sampling.prompt_logprobs)
                if steps is not None:
                    steps.on_output(len(token_ids), output.metrics)
                if forced is not None:
                    token_ids, text, logprobs = forced.cut(token_ids, text, logprobs)
                    if not token_ids and reason is None:
                        continue
                yield EngineOutput(
                    token_ids=token_ids,
                    text=text,
                    finish_reason=_FINISH_REASONS.get(reason, "stop") if reason else None,
                    prompt_tokens=prompt_tokens,
                    cached_tokens=(cached or 0) if first else 0,
                    logprobs=token_logprobs(token_ids, logprobs, wanted)
                    if request.sampling.logprobs is not None else (),
                    prompt_logprobs=prompt_logprobs,
                )
                prompt_logprobs = ()
                first = False
        finally:
            record_transfer_stages(self._transfers.finish(request.request_id))
            if steps is not None:
                steps.finish(_FINISH_REASONS.get(reason, "stop") if reason else None, produced)
            if not finished:
                with contextlib.suppress(Exception):
                    await self._engine.abort(request.request_id)

    def detokenize(self, context: Sequence[int], token_ids: Sequence[int]) -> str:
        """As vLLM's incremental detokenizer streams them (special tokens skipped): the text
        of the context's last tokens and ``token_ids`` past the text of those last tokens
        alone (a multi-byte character split across the boundary ends up in the output)."""
        tokenizer = self._engine.tokenizer if self._engine is not None else None
        if tokenizer is None:
            raise NotImplementedError("the vLLM engine runs without its tokenizer")
        tail = list(context[-_DETOKENIZE_CONTEXT:])
        before = tokenizer.decode(tail, skip_special_tokens=True)
        text: str = tokenizer.decode(tail + list(token_ids), skip_special_tokens=True)
        if text.startswith(before):
            return text[len(before):]
        return str(tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def load(self) -> EngineLoad:
        used = round(self._snapshot.kv_cache_usage * self._total_blocks)
        return EngineLoad(
            running=self._snapshot.running,
            waiting=self._snapshot.waiting,
            used_blocks=used,
            total_blocks=self._total_blocks,
            block_size=self.block_size,
        )

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None
        if self._kv_events is not None:
            await self._kv_events.close()
