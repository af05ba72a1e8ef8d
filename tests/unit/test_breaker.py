"""Circuit breakers (``core.breaker``): closed → open → half-open → closed/open, table-driven."""

from __future__ import annotations

import pytest

from services.router.core.breaker import Breakers, BreakerSettings, BreakerState

C, OP, H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
SETTINGS = BreakerSettings(failures=3, window_s=10.0, cooldown_s=2.0)

# (calls on worker "w" as (method, time)) -> (final state, routable at the last time,
# transitions in order)
ROWS: list[tuple[str, list[tuple[str, float]], BreakerState, bool, list[tuple[BreakerState,
                                                                          BreakerState]]]] = [
    ("healthy", [("succeeded", 0), ("succeeded", 1)], C, True, []),
    ("below the threshold", [("failed", 0), ("failed", 1)], C, True, []),
    ("threshold within the window opens", [("failed", 0), ("failed", 1), ("failed", 2)], OP,
     False, [(C, OP)]),
    ("failures out of the window do not count",
     [("failed", 0), ("failed", 1), ("failed", 11.5)], C, True, []),
    ("successes between failures do not reset the count",
     [("failed", 0), ("succeeded", 0.5), ("failed", 1), ("succeeded", 1.5), ("failed", 2)],
     OP, False, [(C, OP)]),
    ("open during its cool-down", [("failed", 0), ("failed", 0), ("failed", 0),
                                   ("routable", 1.9)], OP, False, [(C, OP)]),
    ("open past its cool-down: routable", [("failed", 0), ("failed", 0), ("failed", 0),
                                           ("routable", 2.0)], OP, True, [(C, OP)]),
    ("routed during the cool-down stays open",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 1.0)], OP, False, [(C, OP)]),
    ("the trial: half-open, nothing else routed",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 2.5)], H, False,
     [(C, OP), (OP, H)]),
    ("trial answered: closed",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 2.5), ("succeeded", 2.6)], C,
     True, [(C, OP), (OP, H), (H, C)]),
    ("trial failed: open again, a new cool-down",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 2.5), ("failed", 2.6),
      ("routable", 4.5)], OP, False, [(C, OP), (OP, H), (H, OP)]),
    ("second trial after the new cool-down closes it",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 2.5), ("failed", 2.6),
      ("routed", 4.7), ("succeeded", 4.8)], C, True, [(C, OP), (OP, H), (H, OP), (OP, H), (H, C)]),
    ("trial abandoned: open, the next request is the trial",
     [("failed", 0), ("failed", 0), ("failed", 0), ("routed", 2.5), ("abandoned", 2.6),
      ("routable", 2.6)], OP, True, [(C, OP), (OP, H), (H, OP)]),
    ("late answers while open change nothing",
     [("failed", 0), ("failed", 0), ("failed", 0), ("succeeded", 0.5), ("failed", 0.6)], OP,
     False, [(C, OP)]),
    ("abandoned while closed changes nothing", [("abandoned", 0)], C, True, []),
]


@pytest.mark.parametrize(("calls", "state", "routable", "transitions"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_breaker(calls: list[tuple[str, float]], state: BreakerState, routable: bool,
                 transitions: list[tuple[BreakerState, BreakerState]]) -> None:
    breakers = Breakers(SETTINGS)
    seen = []
    now = 0.0
    for name, now in calls:
        if name == "routable":
            continue
        method = getattr(breakers, name)
        change = method("w", now) if name in ("failed", "routed") else method("w")
        if change is not None:
            assert change[0] == "w"
            seen.append(change[1:])
    assert breakers.state("w") is state
    assert breakers.routable("w", now) is routable
    assert seen == transitions
    assert breakers.state("other") is C and breakers.routable("other", now)
    assert breakers.open_workers() == ([] if state is C else ["w"])


def test_zero_failures_disables_the_breaker() -> None:
    breakers = Breakers(BreakerSettings(failures=0))
    for _ in range(100):
        assert breakers.failed("w", 0.0) is None
    assert breakers.routable("w", 0.0)


def test_forget_drops_departed_workers() -> None:
    breakers = Breakers(SETTINGS)
    for _ in range(3):
        breakers.failed("w", 0.0)
        breakers.failed("v", 0.0)
    breakers.forget({"v"})
    assert breakers.state("w") is C and breakers.state("v") is OP
