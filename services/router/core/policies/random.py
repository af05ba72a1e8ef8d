"""Uniformly random among the non-busy workers."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.core.cost import eligible
from services.router.core.decision import RouteDecision, RouteQuery, WorkerState
from services.router.core.policies.base import Policy
from services.router.core.policies.simple import decision, load_scores
from services.router.core.routing_settings import RoutingSettings


class RandomPolicy(Policy):
    name = "random"

    def choose(
        self, query: RouteQuery, workers: Sequence[WorkerState], settings: RoutingSettings
    ) -> RouteDecision:
        started = self.clock()
        scores = load_scores(workers, settings)
        pool, all_busy = eligible(scores)
        chosen = self.rng.choice(list(pool))
        return decision(self.name, chosen, scores, query, self.clock() - started,
                        all_busy)
