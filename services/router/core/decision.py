"""Data of a routing decision: a candidate's state going in, scores and the choice coming out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """What the router knows about one candidate worker when it decides."""

    worker_id: str
    running: int = 0
    waiting: int = 0
    used_blocks: int = 0
    total_blocks: int = 0
    pending_prefill_blocks: int = 0
    """Prompt blocks this router sent to the worker whose first token has not come back."""


@dataclasses.dataclass(frozen=True)
class RouteQuery:
    """The request as the router sees it: its prompt's chained block hashes."""

    block_hashes: Sequence[bytes]
    prompt_tokens: int
    block_size: int

    @property
    def prompt_blocks(self) -> float:
        """Prompt length in blocks (a trailing partial block counts by its fraction)."""
        return self.prompt_tokens / self.block_size


@dataclasses.dataclass(frozen=True)
class CandidateScore:
    """How one worker scored (the fields of tandem.v1.RouteCandidate, and more)."""

    worker_id: str
    device_overlap_blocks: int
    store_overlap_blocks: int
    credited_blocks: float
    load: float
    cost: float
    busy: bool = False


@dataclasses.dataclass(frozen=True)
class RouteDecision:
    """The chosen worker and why."""

    worker_id: str
    policy: str
    prompt_blocks: int
    candidates: tuple[CandidateScore, ...]
    """Every candidate, lowest cost first."""
    lookup_s: float = 0.0
    """Time spent in the index lookup."""
    scoring_s: float = 0.0
    """Time spent scoring and choosing."""
    all_busy: bool = False
    """Every candidate was busy; the cheapest was taken anyway."""

    @property
    def chosen(self) -> CandidateScore:
        return next(c for c in self.candidates if c.worker_id == self.worker_id)

    def span_attributes(self, top: int = 3) -> dict[str, str | int | float | bool]:
        """Attributes for the routing span: the choice and the ``top`` best candidates."""
        chosen = self.chosen
        attributes: dict[str, str | int | float | bool] = {
            "tandem.route.policy": self.policy,
            "tandem.route.worker_id": self.worker_id,
            "tandem.route.prompt_blocks": self.prompt_blocks,
            "tandem.route.device_overlap_blocks": chosen.device_overlap_blocks,
            "tandem.route.store_overlap_blocks": chosen.store_overlap_blocks,
            "tandem.route.cost": chosen.cost,
            "tandem.route.candidates": len(self.candidates),
            "tandem.route.all_busy": self.all_busy,
            "tandem.route.lookup_ms": self.lookup_s * 1000,
            "tandem.route.scoring_ms": self.scoring_s * 1000,
        }
        for rank, candidate in enumerate(self.candidates[:top]):
            attributes[f"tandem.route.top.{rank}"] = (
                f"{candidate.worker_id} device={candidate.device_overlap_blocks} "
                f"store={candidate.store_overlap_blocks} load={candidate.load:.1f} "
                f"cost={candidate.cost:.1f}{' busy' if candidate.busy else ''}"
            )
        return attributes


def by_cost(scores: Sequence[CandidateScore]) -> tuple[CandidateScore, ...]:
    return tuple(sorted(scores, key=lambda score: (score.cost, score.worker_id)))
