"""Channels to the live workers and the routing decision among them."""

from __future__ import annotations

import dataclasses
import time

import grpc

from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.disaggregation import DisaggregationSettings, PrefillChoice, choose_prefill
from services.router.core.index import BlockIndex
from services.router.core.policies import make_policy
from services.router.core.routing_settings import RoutingSettings
from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.grpc_server import GrpcSettings
from tandem.hashing import block_hashes, hash_salt
from tandem.v1 import worker_pb2_grpc


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
    """Why (see services/router/disaggregation.py)."""


class WorkerPool:
    """One channel per live worker, the router's own load figures per worker (requests in
    flight, prompt blocks waiting to be prefilled), and the routing policy."""

    def __init__(self, watcher: WorkerWatcher, routing: RoutingSettings,
                 grpc_settings: GrpcSettings | None = None,
                 disaggregation: DisaggregationSettings | None = None) -> None:
        self.watcher = watcher
        self.disaggregation = disaggregation or DisaggregationSettings()
        """Replace (not mutate) to change it at run time."""
        self.grpc_settings = grpc_settings or GrpcSettings()
        self.index = BlockIndex()
        self.routing = routing
        """Replace (not mutate) to change routing at run time."""
        self.policy = make_policy(routing.policy, self.index, routing.seed)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.in_flight: dict[str, int] = {}
        self.pending_prefill: dict[str, int] = {}

    def set_routing(self, routing: RoutingSettings) -> None:
        if routing.policy != self.routing.policy:
            self.policy = make_policy(routing.policy, self.index, routing.seed)
        self.routing = routing

    def decode_workers(self, model: str) -> list[WorkerInfo]:
        return self.watcher.of_role("decode", model)

    def route(self, model: str, tenant: str, prompt_token_ids: list[int],
              exclude: set[str]) -> Route | None:
        """The decode worker for a prompt (None when no live worker is left)."""
        candidates = [w for w in self.decode_workers(model) if w.worker_id not in exclude]
        if not candidates:
            return None
        started = time.perf_counter()
        block_size = candidates[0].block_size or 1
        salt = hash_salt(model, "", tenant)
        hashes = block_hashes(prompt_token_ids, block_size, salt)
        hash_s = time.perf_counter() - started
        states = [WorkerState(
            worker_id=w.worker_id, running=self.in_flight.get(w.worker_id, 0),
            pending_prefill_blocks=self.pending_prefill.get(w.worker_id, 0))
            for w in candidates]
        decision = self.policy.choose(
            RouteQuery(hashes, len(prompt_token_ids), block_size), states, self.routing)
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
        in_flight = {w.worker_id: self.in_flight.get(w.worker_id, 0)
                     for w in self.watcher.of_role("prefill", model)
                     if w.worker_id not in exclude}
        return choose_prefill(self.disaggregation, uncached_tokens, in_flight)

    def prefill_stub(self, worker: WorkerInfo) -> worker_pb2_grpc.PrefillServiceStub:
        return worker_pb2_grpc.PrefillServiceStub(self._channel(worker.address))

    def acquire_prefill(self, worker: WorkerInfo) -> None:
        self._count_in_flight(worker.worker_id, +1)

    def release_prefill(self, worker: WorkerInfo) -> None:
        self._count_in_flight(worker.worker_id, -1)

    def _count_in_flight(self, worker_id: str, change: int) -> None:
        self.in_flight[worker_id] = max(0, self.in_flight.get(worker_id, 0) + change)

    def decode_stub(self, worker: WorkerInfo) -> worker_pb2_grpc.DecodeServiceStub:
        return worker_pb2_grpc.DecodeServiceStub(self._channel(worker.address))

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                address, options=self.grpc_settings.channel_options())
            self._channels[address] = channel
        return channel

    def acquire(self, route: Route) -> None:
        worker_id = route.worker.worker_id
        self._count_in_flight(worker_id, +1)
        self.pending_prefill[worker_id] = (self.pending_prefill.get(worker_id, 0)
                                           + route.prefill_blocks)

    def prefill_done(self, route: Route) -> None:
        worker_id = route.worker.worker_id
        self.pending_prefill[worker_id] = max(
            0, self.pending_prefill.get(worker_id, 0) - route.prefill_blocks)

    def release(self, route: Route) -> None:
        self._count_in_flight(route.worker.worker_id, -1)

    def mark_failed(self, worker: WorkerInfo) -> None:
        self.watcher.quarantine(worker.worker_id)

    async def prune(self) -> None:
        """Closes channels to workers that are gone."""
        live = {worker.address for worker in self.watcher.workers.values()}
        for address in [a for a in self._channels if a not in live]:
            await self._channels.pop(address).close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
