"""``TandemConnector``: vLLM's KV connector interface (``KVConnectorBase_V1``) over tandem's
KV store. vLLM loads it through ``kv_connector_module_path`` = ``tandem.kvconnector.connector``.

Scheduler side (in the engine core): for each request, hash its whole prompt blocks with tandem's
chain, find how many leading blocks the store holds (from the request's KV handle, or a store
lookup), tell the scheduler how many tokens it can skip, and plan per step which blocks to load
and which newly completed prompt blocks to save (chunked prefill saves every chunk's blocks).
Worker side: load planned blocks into the paged cache before the forward pass; after it, copy
the newly completed blocks out and put them in the store (whole blocks only, committed before
the step's outputs leave the engine: a prefill's KV handle is never ahead of its blocks).
Loads are synchronous within the step, so an aborted request never leaves a transfer behind.

Each transfer is a ``kvclient.put`` / ``kvclient.get`` span in the request's trace (its W3C
headers ride the request's ``kv_transfer_params``; the worker side exports to the worker's
OTLP endpoint from whichever vLLM process it runs in) and a ``Transfer`` in the connector's
stats, which vLLM carries to the tandem worker process (``tandem.kvconnector.stats``), where
it becomes the ``kv_put`` / ``kv_get`` stage.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from tandem.hashing import block_hashes, prompt_hashes
from tandem.kv_transfers import Direction, Transfer
from tandem.kvconnector.bridge import StoreBridge
from tandem.kvconnector.layout import BlockLayout
from tandem.kvconnector.plan import BlockRun, RequestPlan, loadable_blocks
from tandem.kvconnector.settings import TRANSFER_PARAMS_KEY, ConnectorSettings
from tandem.kvconnector.stats import TandemConnectorStats
from tandem.telemetry import TelemetrySettings, context_from_headers, setup_tracing

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RequestTag:
    """Who a transfer is for: tandem's request id and the request's W3C trace headers."""

    request_id: str
    trace: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TandemConnectorMetadata(KVConnectorMetadata):
    """One step's transfers, from the scheduler side to the worker side."""

    loads: list[BlockRun] = dataclasses.field(default_factory=list)
    saves: list[BlockRun] = dataclasses.field(default_factory=list)
    tags: dict[str, RequestTag] = dataclasses.field(default_factory=dict)
    """By vLLM request id, for the requests of ``loads`` and ``saves``."""

    def tag(self, run: BlockRun) -> RequestTag:
        return self.tags.get(run.request_id) or RequestTag(run.request_id)


class TandemConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role,
                         kv_cache_config=kv_cache_config)  # type: ignore[arg-type]
        self.settings = ConnectorSettings.from_extra_config(
            self._kv_transfer_config.kv_connector_extra_config)
        self.block_size = int(vllm_config.cache_config.block_size)
        self.salt = self.settings.salt()
        self._bridge: StoreBridge | None = None
        self._plans: dict[str, RequestPlan] = {}
        self._tags: dict[str, RequestTag] = {}
        self._layout: BlockLayout | None = None
        self._load_errors: set[int] = set()
        self._stats = TandemConnectorStats()
        if role == KVConnectorRole.WORKER and self.settings.otlp_endpoint:
            setup_tracing(self.settings.service_name,
                          TelemetrySettings(otlp_endpoint=self.settings.otlp_endpoint))
        if role == KVConnectorRole.SCHEDULER and self.settings.load and self.settings.lookup:
            self._open_bridge()  # its first lookup is in a scheduling step

    def _open_bridge(self) -> None:
        """Makes the store bridge now, at engine start, instead of in the first step that
        needs it: its thread, channels and same-host probe took ~25 ms of the first hand-off's
        load (measured 2026-12-04). A store that is down changes nothing (the link retries in
        the background)."""
        try:
            _ = self.bridge
        except Exception as error:  # the first call tries again
            log.warning("KV store bridge not opened at start: %s", error)

    @property
    def bridge(self) -> StoreBridge:
        if self._bridge is None:
            self._bridge = StoreBridge(self.settings.store_address,
                                       self.settings.client_settings())
        return self._bridge

    # ---- scheduler side -----------------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        plan = self._plan_of(request)
        if num_computed_tokens >= plan.prompt_tokens - 1:
            return 0, False
        present = self._present_blocks(request, plan, num_computed_tokens)
        plan.found_in_store(present)
        external = plan.external_tokens(present, num_computed_tokens)
        plan.plan_load(num_computed_tokens, external)
        return external, False

    def _plan_of(self, request: Request) -> RequestPlan:
        plan = self._plans.get(request.request_id)
        if plan is None:
            params = (request.kv_transfer_params or {}).get(TRANSFER_PARAMS_KEY) or {}
            salt = bytes.fromhex(params["salt"]) if params.get("salt") else self.salt
            prompt = list(request.prompt_token_ids or [])
            # A prefill hand-off stores the prompt's partial tail too; other saves whole blocks.
            hand_off = bool(params.get("save"))
            hashes = (prompt_hashes if hand_off else block_hashes)(prompt, self.block_size, salt)
            plan = RequestPlan(
                request_id=request.request_id, hashes=hashes, salt=salt,
                prompt_tokens=len(prompt), block_size=self.block_size,
                save=bool(params.get("save", self.settings.save)),
                covered_tokens=len(prompt) if hand_off else -1)
            self._plans[request.request_id] = plan
            self._tags[request.request_id] = RequestTag(
                str(params.get("request_id") or request.request_id),
                dict(params.get("trace") or {}))
        else:
            plan.reset_after_preemption()
        return plan

    def _present_blocks(self, request: Request, plan: RequestPlan, computed: int) -> int:
        """Leading blocks the store holds: from the KV handle when the request carries one (the
        prefill worker committed them), else from a store lookup."""
        params = (request.kv_transfer_params or {}).get(TRANSFER_PARAMS_KEY) or {}
        handle = [bytes.fromhex(h) for h in params.get("block_hashes", ())]
        if handle:
            covered = int(params.get("num_tokens", len(handle) * self.block_size))
            prompt = list(request.prompt_token_ids or [])[:covered]
            if len(prompt) == covered and handle == prompt_hashes(prompt, self.block_size,
                                                                  plan.salt):
                plan.hashes, plan.covered_tokens = handle, covered
                return len(handle)
            log.warning("KV handle does not match the prompt's blocks; ignoring it",
                        extra={"request_id": request.request_id})
        loadable = loadable_blocks(plan.prompt_tokens, self.block_size)
        if not self.settings.load or not self.settings.lookup or \
                loadable * self.block_size <= computed:
            return 0
        wanted = plan.hashes[:loadable]
        try:
            return self.bridge.lookup(wanted)
        except Exception as error:  # the store is a cache: unreachable means no hit
            log.warning("KV store lookup failed: %s", error)
            return 0

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        plan = self._plans.get(request.request_id)
        if plan is not None:  # what the scheduler granted, which may be less than offered
            plan.plan_load(plan.load_from * self.block_size, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = TandemConnectorMetadata()
        scheduled = scheduler_output.num_scheduled_tokens
        for preempted in scheduler_output.preempted_req_ids or ():
            if preempted in self._plans:
                self._plans[preempted].reset_after_preemption()
        for new in scheduler_output.scheduled_new_reqs:
            plan = self._plans.get(new.req_id)
            if plan is not None:
                plan.set_blocks(new.block_ids[0])
                self._add_step(plan, meta, new.num_computed_tokens + scheduled[new.req_id])
        cached = scheduler_output.scheduled_cached_reqs
        for index, req_id in enumerate(cached.req_ids):
            plan = self._plans.get(req_id)
            if plan is None:
                continue
            new_ids = cached.new_block_ids[index]
            if req_id in cached.resumed_req_ids:
                plan.set_blocks(new_ids[0] if new_ids else [])
            elif new_ids:
                plan.add_blocks(new_ids[0])
            self._add_step(plan, meta, cached.num_computed_tokens[index] + scheduled[req_id])
        for run in (*meta.loads, *meta.saves):
            if run.request_id in self._tags:
                meta.tags[run.request_id] = self._tags[run.request_id]
        return meta

    @staticmethod
    def _add_step(plan: RequestPlan, meta: TandemConnectorMetadata, computed_after: int) -> None:
        load = plan.take_load()
        if load is not None:
            meta.loads.append(load)
        save = plan.take_save(computed_after)
        if save is not None:
            meta.saves.append(save)

    def request_finished(self, request: Request,
                         block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._plans.pop(request.request_id, None)
        self._tags.pop(request.request_id, None)
        return False, None

    # ---- worker side --------------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """The layers of the cache groups vLLM transfers, and its scheduler's block count (the
        views may count smaller kernel blocks); the views' strides carry the layout."""
        config = self._kv_cache_config
        num_blocks = None
        if config is not None:
            if len(config.transfer_groups) > 1:  # the plans follow one block table (group 0)
                raise ValueError("tandem's KV connector moves one KV cache group; this model "
                                 f"has {len(config.transfer_groups)} (hybrid attention)")
            num_blocks = int(config.num_blocks)
            moved = {name for group in config.transfer_groups for name in group.layer_names}
            kv_caches = {name: cache for name, cache in kv_caches.items() if name in moved}
        self._layout = BlockLayout(kv_caches, num_blocks)
        self._open_bridge()  # before the first step that loads or saves
        layout_name = self._vllm_config.cache_config.kv_cache_layout
        log.info("tandem KV connector: %d layers, %d bytes per block (%s cache layout), "
                 "store %s", len(self._layout.layers), self._layout.block_bytes, layout_name,
                 self.settings.store_address)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, TandemConnectorMetadata)
        if not meta.loads:
            return
        layout = self._require_layout()
        for run in meta.loads:
            tag = meta.tag(run)
            started = time.perf_counter()
            try:
                payloads = self.bridge.get(run.hashes, context=context_from_headers(tag.trace))
            except Exception as error:
                log.warning("KV store get failed: %s", error)
                payloads = []
            for block_id, payload in zip(run.block_ids, payloads, strict=False):
                layout.scatter(block_id, payload)
            if len(payloads) < len(run.hashes):  # evicted since the lookup: recompute them
                self._load_errors.update(run.block_ids[len(payloads):])
            self._stats.add(Transfer(tag.request_id, Direction.GET,
                                     time.perf_counter() - started,
                                     sum(len(p) for p in payloads), len(payloads)))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None  # start_load_kv loads every layer before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        return None  # whole blocks are saved after the forward pass, in wait_for_save

    def wait_for_save(self) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, TandemConnectorMetadata)
        if not meta.saves:
            return
        layout = self._require_layout()
        for run in meta.saves:
            tag = meta.tag(run)
            started = time.perf_counter()
            payloads = layout.gather_many(run.block_ids)
            try:
                result = self.bridge.put(run.hashes, payloads, run.parent,
                                         context=context_from_headers(tag.trace))
            except Exception as error:  # a lost save is a future miss, never an engine failure
                log.warning("KV store put failed: %s", error)
                continue
            if result.failed:
                log.warning("KV store refused %d blocks", len(result.failed))
            self._stats.add(Transfer(tag.request_id, Direction.PUT,
                                     time.perf_counter() - started,
                                     sum(len(p) for p in payloads), len(payloads)))

    def get_kv_connector_stats(self) -> TandemConnectorStats | None:
        """The transfers since the last call (vLLM asks after every step)."""
        if self._stats.is_empty():
            return None
        stats, self._stats = self._stats, TandemConnectorStats()
        return stats

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None
                                 ) -> TandemConnectorStats:
        return TandemConnectorStats(data=dict(data or {}))

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def _require_layout(self) -> BlockLayout:
        if self._layout is None:
            raise RuntimeError("register_kv_caches was never called")
        return self._layout

    def shutdown(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
