"""Round robin over the non-busy workers, in worker-id order."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.core.cost import eligible
from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.policies.base import Policy
from services.router.core.policies.simple import decision, load_scores
from services.router.core.routing_settings import RoutingSettings


class RoundRobinPolicy(Policy):
    name = "round_robin"
    _turn = 0

    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        started = self.clock()
        scores = sorted(load_scores(workers, settings), key=lambda s: s.worker_id)
        pool, all_busy = eligible(scores)
        chosen = pool[self._turn % len(pool)]
        self._turn += 1
        return decision(self.name, chosen, scores, query, self.clock() - started,
                        all_busy)
