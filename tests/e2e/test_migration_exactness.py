"""With the real engine at temperature 0, a stream whose decode worker is SIGKILLed mid-stream
is migrated and its whole text equals the undisturbed run's (tests/e2e/exactness.py; the
benchmark runs the full 10 trials: ``make bench-faults``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.exactness import VllmFleet, trials

TRIALS = 2


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmFleet]:
    fleet = VllmFleet(Path(tmp_path_factory.mktemp("exactness")))
    try:
        yield fleet.start()
    finally:
        fleet.stop()


async def test_a_migrated_greedy_stream_equals_the_undisturbed_run(fleet: VllmFleet) -> None:
    done = await trials(fleet, TRIALS)
    for one in done:
        print(f"{one.question!r}: killed {one.killed}, exact {one.exact}")
    # a near-tie may still flip when the batch changes: one trial of the two may differ
    # (the target, 9 of 10, is the benchmark's)
    assert sum(one.exact for one in done) >= TRIALS - 1, [
        (one.undisturbed, one.migrated) for one in done if not one.exact]
    assert all(one.migrated for one in done)
