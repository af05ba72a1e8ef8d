"""Queueing approximations the sizing uses: Erlang C and the M/G/c waiting-time tail
(Allen-Cunneen: the M/M/c tail with its mean scaled by (1 + cs²)/2), the sojourn tail as a
mixture over service-time samples, and a Poisson tail for a decode batch."""

from __future__ import annotations

import math

import numpy as np

RESOLUTION = 1e-3
"""Relative precision of a computed quantile."""


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with ``offered`` = λ/μ Erlangs
    (1 when the queue is unstable)."""
    if servers <= 0 or offered >= servers:
        return 1.0
    if offered <= 0:
        return 0.0
    # Erlang B by its stable recursion, then C from B.
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    return b / (1 - rho + rho * b)


def wait_tail_params(servers: int, rate: float, mean_s: float, scv: float) -> tuple[float, float]:
    """(P(wait > 0), decay rate of the wait's tail) of an M/G/c queue: P(W > t) ≈ P0·e^(−θt).
    An unstable queue gives (1, 0)."""
    if rate <= 0 or mean_s <= 0:
        return 0.0, math.inf
    offered = rate * mean_s
    if servers <= 0 or offered >= servers:
        return 1.0, 0.0
    waiting = erlang_c(servers, offered)
    theta = (servers / mean_s - rate) * 2 / (1 + scv)
    return waiting, theta


def sojourn_tail(x: float, service: np.ndarray, waiting: float, theta: float) -> float:
    """P(wait + service > x) with ``service`` samples and the wait tail (waiting, theta)."""
    slack = x - service
    if theta == 0:
        return float(np.mean(np.where(slack < 0, 1.0, waiting)))
    tail = np.where(slack < 0, 1.0, waiting * np.exp(-theta * np.maximum(slack, 0.0)))
    return float(np.mean(tail))


def sojourn_quantile(q: float, service: np.ndarray, waiting: float, theta: float) -> float:
    """The ``q`` quantile of wait + service (inf when the queue is unstable and waits)."""
    if theta == 0 and waiting > 1 - q:
        return math.inf
    lo = float(np.min(service)) if service.size else 0.0
    hi = float(np.max(service)) if service.size else 0.0
    if theta > 0:
        hi += max(0.0, math.log(max(waiting, 1e-300) / (1 - q))) / theta
    while hi - lo > RESOLUTION * hi:
        mid = (lo + hi) / 2
        if sojourn_tail(mid, service, waiting, theta) > 1 - q:
            lo = mid
        else:
            hi = mid
    return hi


def normal_tail(z: float) -> float:
    """P(Z > z) of a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def poisson_tail(limit: float, mean: float) -> float:
    """P(N > limit) for N ~ Poisson(mean), by its normal approximation with continuity
    correction."""
    if mean <= 0:
        return 0.0 if limit >= 0 else 1.0
    return normal_tail((math.floor(limit) + 0.5 - mean) / math.sqrt(mean))
