"""The non-busy worker with the lowest load (the cost function without the prefix term)."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.core.cost import eligible
from services.router.core.decision import RouteDecision, RouteQuery, WorkerState, by_cost
from services.router.core.policies.base import Policy
from services.router.core.policies.simple import decision, load_scores
from services.router.core.routing_settings import RoutingSettings


class LeastLoadedPolicy(Policy):
    name = "least_loaded"

    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        started = self.clock()
        scores = by_cost(load_scores(workers, settings))
        pool, all_busy = eligible(scores)
        return decision(self.name, pool[0], scores, query, self.clock() - started,
                        all_busy)
