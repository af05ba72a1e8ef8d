"""Shared scoring of the load-only policies: no index lookup, cost = load."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.core.cost import is_busy, worker_load
from services.router.core.decision import CandidateScore, RouteDecision, RouteQuery, WorkerState
from services.router.core.routing_settings import RoutingSettings


def load_scores(
    workers: Sequence[WorkerState], settings: RoutingSettings
) -> list[CandidateScore]:
    scores = []
    for worker in workers:
        load = worker_load(worker, settings)
        scores.append(CandidateScore(worker.worker_id, 0, 0, 0.0, load, load,
                                     is_busy(worker, settings)))
    return scores


def decision(
    policy: str, chosen: CandidateScore, scores: Sequence[CandidateScore], query: RouteQuery,
    scoring_s: float, all_busy: bool,
) -> RouteDecision:
    """The decision with the chosen candidate listed first."""
    ordered = (chosen, *(s for s in scores if s is not chosen))
    return RouteDecision(chosen.worker_id, policy, len(query.block_hashes), ordered, 0.0,
                         scoring_s, all_busy)
