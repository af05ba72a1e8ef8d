"""Queueing approximations the sizing uses: Erlang C for the chance to wait, an exponential
tail of the wait whose decay is the Cramér-Lundberg root of the pooled server (c servers as
one of service S/c: λ(E[e^(θS/c)] - 1) = θ, exact for M/M/c, and it sees the whole service
distribution, not two moments), the sojourn tail as a mixture over service-time samples, and
a Poisson tail for a decode batch."""

from __future__ import annotations

import math

import numpy as np

RESOLUTION = 1e-3
"""Relative precision of a computed quantile or decay rate."""
NEWTON_STEPS = 30
EXPONENT_CAP = 700.0
"""exp() of more overflows a double."""


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


def wait_tail_params(
    servers: int, rate: float, service: np.ndarray, mean_s: float | None = None
) -> tuple[float, float]:
    """(P(wait > 0), decay rate θ of the wait's tail) of an M/G/c queue with ``service``
    samples: P(W > t) ≈ P0·e^(-θt). An unstable queue gives (1, 0)."""
    mean = float(service.mean()) if mean_s is None else mean_s
    if rate <= 0 or mean <= 0:
        return 0.0, math.inf
    offered = rate * mean
    if servers <= 0 or offered >= servers:
        return 1.0, 0.0
    return erlang_c(servers, offered), lundberg_root(rate, service / servers)


def lundberg_root(rate: float, service: np.ndarray) -> float:
    """The positive root θ of rate·(E[e^(θS)] - 1) = θ (S: ``service`` samples, rate·E[S] <
    1), by Newton's method from above (the function is convex)."""
    mean = float(service.mean())
    peak = float(service.max())
    theta = 2 * (1 / mean - rate) / (1 + float(service.var()) / mean**2)  # Allen-Cunneen

    def f(t: float) -> tuple[float, float]:
        grow = np.exp(np.minimum(t * service, EXPONENT_CAP))
        return rate * (float(grow.mean()) - 1) - t, rate * float((service * grow).mean()) - 1

    value, slope = f(theta)
    while value < 0:  # below the root: step up until above it
        theta *= 2
        value, slope = f(theta)
    for _ in range(NEWTON_STEPS):
        step = value / slope
        theta -= step
        if step <= RESOLUTION * theta or theta * peak >= EXPONENT_CAP:
            break
        value, slope = f(theta)
    return max(theta, 0.0)


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
    if limit < 0:
        return 1.0
    if mean <= 0:
        return 0.0
    return normal_tail((math.floor(limit) + 0.5 - mean) / math.sqrt(mean))
