"""The queueing approximations against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.planner.core.queueing import (
    erlang_c,
    poisson_tail,
    sojourn_quantile,
    sojourn_tail,
    wait_tail_params,
)


@pytest.mark.parametrize(
    ("servers", "offered", "expected"),
    [
        (1, 0.5, 0.5),  # M/M/1: P(wait) = utilisation
        (2, 1.0, 1 / 3),  # textbook value
        (3, 2.0, 4 / 9),
        (10, 10.0, 1.0),  # unstable
        (4, 0.0, 0.0),
    ],
)
def test_erlang_c(servers: int, offered: float, expected: float) -> None:
    assert erlang_c(servers, offered) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("rate", "q"), [(0.5, 0.9), (0.8, 0.99), (0.2, 0.5)])
def test_mm1_sojourn_is_exponential(rate: float, q: float) -> None:
    """M/M/1 with μ = 1: W + S ~ Exp(μ - λ); exponential service samples stand in for S."""
    service = -np.log1p(-(np.arange(4000) + 0.5) / 4000)  # quantiles of Exp(1)
    waiting, theta = wait_tail_params(1, rate, service)
    assert waiting == pytest.approx(rate, rel=1e-3)
    exact = -math.log(1 - q) / (1 - rate)
    assert sojourn_quantile(q, service, waiting, theta) == pytest.approx(exact, rel=0.02)
    assert sojourn_tail(exact, service, waiting, theta) == pytest.approx(1 - q, rel=0.03)


def test_unstable_queue_has_no_quantile() -> None:
    service = np.full(8, 1.0)
    waiting, theta = wait_tail_params(2, 3.0, service)
    assert (waiting, theta) == (1.0, 0.0)
    assert sojourn_quantile(0.9, service, waiting, theta) == math.inf
    assert sojourn_tail(100.0, service, waiting, theta) == 1.0


EXPONENTIAL = -np.log1p(-(np.arange(20000) + 0.5) / 20000)  # quantiles of Exp(1)


@pytest.mark.parametrize(("servers", "rate"), [(1, 0.5), (4, 3.0), (16, 14.0)])
def test_wait_decay_is_exact_for_mmc(servers: int, rate: float) -> None:
    _, theta = wait_tail_params(servers, rate, EXPONENTIAL)
    assert theta == pytest.approx(servers - rate, rel=0.02)  # M/M/c: cμ - λ


def test_wait_decay_sees_the_service_distribution() -> None:
    """Same mean, more variance: the wait's tail decays slower."""
    fixed = wait_tail_params(4, 3.0, np.full(100, 1.0))
    spread = wait_tail_params(4, 3.0, np.concatenate([np.full(90, 0.5), np.full(10, 5.5)]))
    assert fixed[0] == spread[0]
    assert fixed[1] > 2 * wait_tail_params(4, 3.0, EXPONENTIAL)[1] * 0.9  # ~2(cμ-λ) for M/D/c
    assert spread[1] < wait_tail_params(4, 3.0, EXPONENTIAL)[1]


@pytest.mark.parametrize(
    ("limit", "mean", "expected"),
    [(10, 10.0, 0.44), (20, 10.0, 0.0), (0, 0.0, 0.0), (-1, 0.0, 1.0)],
)
def test_poisson_tail(limit: float, mean: float, expected: float) -> None:
    assert poisson_tail(limit, mean) == pytest.approx(expected, abs=0.02)
