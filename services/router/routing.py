"""The routing decision among the live workers: which decode worker takes a prompt, and whether
a prefill worker computes it first. Reads the live workers (discovery), the block index, the
in-flight ledger and the routing settings; the scoring itself is the policy's (``core``)."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.disaggregation import (
    DisaggregationSettings,
    PrefillChoice,
    choose_prefill,
)
from services.router.core.in_flight import InFlightLedger
from services.router.core.index import BlockIndex
from services.router.core.policies import make_policy
from services.router.core.routing_settings import RoutingSettings
from tandem.discovery import WorkerInfo, WorkerWatcher

if TYPE_CHECKING:
    from services.router.guard import FleetGuard
from tandem.hashing import block_hashes, hash_salt


@dataclasses.dataclass(frozen=True)
class Route:
    """Where one request goes, and why."""

    worker: WorkerInfo
    decision: RouteDecision
    prefill_blocks: int
    """Prompt blocks the decode worker still has to compute (0 after a remote prefill)."""
    hash_s: float
    salt: bytes
    """Root of the prompt's block hash chain (model, tenant)."""
    prefill: WorkerInfo | None = None
    """The prefill worker that computes the prompt first; None: the decode worker does."""
    prefill_reason: str = "disabled"
    """Why (see services/router/core/disaggregation.py)."""


class RouteChooser:
    """Chooses routes with the routing policy named by its settings."""

    def __init__(self, watcher: WorkerWatcher, index: BlockIndex, ledger: InFlightLedger,
                 settings: RoutingSettings,
                 disaggregation: DisaggregationSettings | None = None) -> None:
        self.watcher = watcher
        self.index = index
        self.ledger = ledger
        self.disaggregation = disaggregation or DisaggregationSettings()
        """Replace (not mutate) to change it at run time."""
        self.settings = settings
        """Replace (not mutate) with ``set_settings`` to change routing at run time."""
        self.policy = make_policy(settings.policy, index, settings.seed, time.perf_counter)
        self.guard: FleetGuard | None = None
        """Admission control and circuit breakers (filter the candidates); None: none."""

    def set_settings(self, settings: RoutingSettings) -> None:
        if settings.policy != self.settings.policy:
            self.policy = make_policy(settings.policy, self.index, settings.seed,
                                      time.perf_counter)
        self.settings = settings

    def decode_workers(self, model: str) -> list[WorkerInfo]:
        """The decode workers that take new requests (draining ones only finish theirs)."""
        return [w for w in self.watcher.of_role("decode", model) if w.routable]

    def choose(self, model: str, tenant: str, prompt_token_ids: list[int],
               exclude: set[str]) -> Route | None:
        """The route of a prompt (None when no live decode worker is left)."""
        candidates = [w for w in self.decode_workers(model) if w.worker_id not in exclude]
        if self.guard is not None:
            candidates = self.guard.candidates(candidates)
        if not candidates:
            return None
        started = time.perf_counter()
        block_size = candidates[0].block_size or 1
        salt = hash_salt(model, "", tenant)
        hashes = block_hashes(prompt_token_ids, block_size, salt)
        hash_s = time.perf_counter() - started
        running, pending = self.ledger.requests, self.ledger.pending_prefill_blocks
        states = [WorkerState(
            worker_id=w.worker_id, running=running.get(w.worker_id, 0),
            pending_prefill_blocks=pending.get(w.worker_id, 0))
            for w in candidates]
        decision = self.policy.choose(
            RouteQuery(hashes, len(prompt_token_ids), block_size), states, self.settings)
        worker = next(w for w in candidates if w.worker_id == decision.worker_id)
        prefill_blocks = max(0, len(hashes) - decision.chosen.device_overlap_blocks)
        choice = self._choose_prefill(model, decision, len(prompt_token_ids), block_size,
                                      exclude)
        prefill = self.watcher.workers.get(choice.prefill_worker or "")
        return Route(worker, decision, 0 if prefill else prefill_blocks, hash_s, salt, prefill,
                     choice.reason)

    def _choose_prefill(self, model: str, decision: RouteDecision, prompt_tokens: int,
                        block_size: int, exclude: set[str]) -> PrefillChoice:
        chosen = decision.chosen
        cached_blocks = max(chosen.device_overlap_blocks, chosen.store_overlap_blocks)
        uncached_tokens = max(0, prompt_tokens - cached_blocks * block_size)
        in_flight = {w.worker_id: self.ledger.running(w.worker_id)
                     for w in self.watcher.of_role("prefill", model)
                     if w.routable and w.worker_id not in exclude
                     and (self.guard is None or self.guard.allows(w.worker_id))}
        return choose_prefill(self.disaggregation, uncached_tokens, in_flight)

    def quarantine(self, worker: WorkerInfo) -> None:
        """Out of every route until the worker proves alive again (see discovery)."""
        self.watcher.quarantine(worker.worker_id)
