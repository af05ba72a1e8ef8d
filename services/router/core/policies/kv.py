"""KV-aware routing: the index's overlaps and the workers' load, scored by the cost function."""

from __future__ import annotations

import random
from collections.abc import Sequence

from services.router.core.cost import pick, score
from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.index import BlockIndex
from services.router.core.policies.base import Clock, Policy, no_clock
from services.router.core.routing_settings import RoutingSettings


class KVPolicy(Policy):
    name = "kv"
    reads_index = True

    def __init__(self, index: BlockIndex, rng: random.Random | None = None,
                 clock: Clock = no_clock) -> None:
        super().__init__(rng, clock)
        self.index = index

    @classmethod
    def build(cls, index: BlockIndex, rng: random.Random, clock: Clock = no_clock) -> KVPolicy:
        return cls(index, rng, clock)

    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        started = self.clock()
        overlaps = self.index.overlaps(query.block_hashes)
        looked_up = self.clock()
        scores = score(query.prompt_blocks, overlaps, workers, settings)
        chosen, all_busy = pick(scores, settings, self.rng)
        done = self.clock()
        return RouteDecision(chosen.worker_id, self.name, len(query.block_hashes), scores,
                             looked_up - started, done - looked_up, all_busy)
