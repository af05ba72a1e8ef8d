"""Joint allocation of a worker budget: the next worker goes where it removes the most
violations."""

from __future__ import annotations

import pytest

from services.planner.core.allocation import allocate
from services.planner.core.types import Pool

LOW: dict[Pool, int] = {"prefill": 1, "decode": 1}
HIGH: dict[Pool, int] = {"prefill": 10, "decode": 10}


def violations(pool: Pool, count: int) -> float:
    """Prefill: 30/s missing with one worker, halving per worker; decode: 8/s, then 0."""
    if pool == "prefill":
        return 30.0 / 2 ** (count - 1)
    return 8.0 if count < 2 else 0.0


@pytest.mark.parametrize(
    ("need", "budget", "have", "expected"),
    [
        ({"prefill": 4, "decode": 2}, None, None, {"prefill": 4, "decode": 2}),
        ({"prefill": 4, "decode": 2}, 6, None, {"prefill": 4, "decode": 2}),  # fits
        ({"prefill": 0, "decode": 0}, 6, None, {"prefill": 1, "decode": 1}),  # minimums
        ({"prefill": 20, "decode": 2}, None, None, {"prefill": 10, "decode": 2}),  # maximum
        # 4 workers: 1+1, then prefill (gain 15 > 8), then decode (gain 8 > prefill's 7.5)
        ({"prefill": 4, "decode": 2}, 4, None, {"prefill": 2, "decode": 2}),
        ({"prefill": 4, "decode": 2}, 5, None, {"prefill": 3, "decode": 2}),
        # serving workers are kept when they fit: no decode worker is drained for prefill
        ({"prefill": 4, "decode": 3}, 5, {"prefill": 2, "decode": 3}, {"prefill": 2, "decode": 3}),
    ],
)
def test_allocate(
    need: dict[Pool, int],
    budget: int | None,
    have: dict[Pool, int] | None,
    expected: dict[Pool, int],
) -> None:
    result = allocate(need, LOW, HIGH, budget, violations, have)
    assert result == expected
    if budget is not None:
        assert sum(result.values()) <= max(budget, sum(LOW.values()))
