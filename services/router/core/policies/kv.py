"""KV-aware routing: the index's overlaps and the workers' load, scored by the cost function."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from services.router.core.cost import pick, score
from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.index import BlockIndex
from services.router.core.policies.base import Policy
from services.router.core.routing_settings import RoutingSettings


class KVPolicy(Policy):
    name = "kv"

    def __init__(self, index: BlockIndex, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self.index = index

    @classmethod
    def build(cls, index: BlockIndex, rng: random.Random) -> KVPolicy:
        return cls(index, rng)

    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        started = time.perf_counter()
        overlaps = self.index.overlaps(query.block_hashes)
        looked_up = time.perf_counter()
        scores = score(query.prompt_blocks, overlaps, workers, settings)
        chosen, all_busy = pick(scores, settings, self.rng)
        done = time.perf_counter()
        return RouteDecision(chosen.worker_id, self.name, len(query.block_hashes), scores,
                             looked_up - started, done - looked_up, all_busy)
