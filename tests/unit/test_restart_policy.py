"""The supervisor's restart policy: backoff, window counting, giving up."""

from __future__ import annotations

import pytest

from tandem.restart_policy import (
    RestartDecision,
    RestartPolicy,
    decide,
    jittered_backoff,
    recent,
)

POLICY = RestartPolicy(backoff_s=0.5, max_backoff_s=4.0, max_restarts=3, window_s=60.0)


@pytest.mark.parametrize(("deaths", "now", "expected"), [
    # first death: restart after the base backoff
    ([100.0], 100.0, RestartDecision("restart", 0.5, 1)),
    # the backoff is counted from the death, not from when the supervisor looks
    ([100.0], 100.25, RestartDecision("restart", 0.25, 1)),
    ([100.0], 101.0, RestartDecision("restart", 0.0, 1)),
    # doubling per death within the window
    ([100.0, 110.0], 110.0, RestartDecision("restart", 1.0, 2)),
    ([100.0, 110.0, 120.0], 120.0, RestartDecision("restart", 2.0, 3)),
    # past max_restarts within the window: given up
    ([100.0, 110.0, 120.0, 130.0], 130.0, RestartDecision("give_up", 0.0, 4)),
    # old deaths leave the window: back to a short backoff, no give-up
    ([0.0, 10.0, 20.0, 130.0], 130.0, RestartDecision("restart", 0.5, 1)),
    ([0.0, 100.0, 110.0, 120.0], 120.0, RestartDecision("restart", 2.0, 3)),
    # exactly window_s old: out of it
    ([60.0, 120.0], 120.0, RestartDecision("restart", 0.5, 1)),
    # order does not matter
    ([120.0, 100.0, 110.0], 120.0, RestartDecision("restart", 2.0, 3)),
])
def test_decide(deaths: list[float], now: float, expected: RestartDecision) -> None:
    assert decide(POLICY, deaths, now) == expected


@pytest.mark.parametrize(("policy", "count", "delay"), [
    # the cap holds however many deaths
    (RestartPolicy(backoff_s=1.0, max_backoff_s=3.0, max_restarts=10), 5, 3.0),
    (RestartPolicy(backoff_s=1.0, max_backoff_s=3.0, max_restarts=10), 2, 2.0),
    # no backoff at all
    (RestartPolicy(backoff_s=0.0, max_backoff_s=0.0, max_restarts=10), 4, 0.0),
])
def test_backoff_is_capped(policy: RestartPolicy, count: int, delay: float) -> None:
    deaths = [float(i) for i in range(count)]
    assert decide(policy, deaths, deaths[-1]) == RestartDecision("restart", delay, count)


@pytest.mark.parametrize(("max_restarts", "deaths", "action"), [
    (0, [1.0], "give_up"),  # never restart
    (1, [1.0], "restart"),
    (1, [1.0, 2.0], "give_up"),
])
def test_max_restarts(max_restarts: int, deaths: list[float], action: str) -> None:
    policy = RestartPolicy(max_restarts=max_restarts)
    assert decide(policy, deaths, deaths[-1]).action == action


@pytest.mark.parametrize(("deaths", "window", "count"), [
    ([], 10.0, 0),
    ([5.0], 10.0, 1),
    ([0.0, 5.0, 9.9], 10.0, 3),
    ([0.0, 5.0, 10.0], 10.0, 2),
])
def test_recent(deaths: list[float], window: float, count: int) -> None:
    assert recent(deaths, window) == count


@pytest.mark.parametrize("kwargs", [
    {"backoff_s": -1.0}, {"backoff_s": 5.0, "max_backoff_s": 1.0}, {"max_restarts": -1},
    {"window_s": 0.0},
])
def test_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_no_death_no_decision() -> None:
    with pytest.raises(ValueError):
        decide(POLICY, [], 0.0)


@pytest.mark.parametrize(("failures", "jitter", "pause"), [
    (1, 0.5, 0.05),
    (2, 0.5, 0.1),
    (3, 1.0, 0.4),
    (20, 1.0, 2.0),  # capped
    (20, 0.0, 0.0),
])
def test_jittered_backoff(failures: int, jitter: float, pause: float) -> None:
    assert jittered_backoff(failures, 0.1, 2.0, jitter) == pytest.approx(pause)


def test_jittered_backoff_needs_a_failure() -> None:
    with pytest.raises(ValueError):
        jittered_backoff(0, 0.1, 2.0, 0.5)
