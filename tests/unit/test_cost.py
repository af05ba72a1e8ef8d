"""The cost function, table-driven: overlap credit, load, busy exclusion, temperature."""

from __future__ import annotations

import dataclasses
import random

import pytest

from services.router.core.cost import credited_blocks, pick, score, store_credit_prefix
from services.router.core.decision import WorkerState
from services.router.core.index import Overlaps
from services.router.core.routing_settings import RoutingSettings

PLAIN = RoutingSettings(running_weight=0.0, waiting_weight=0.0, pending_prefill_weight=0.0,
                        cxl_credit=0.5, nvme_credit=0.25)


@pytest.mark.parametrize(("device", "store", "expected"), [
    (0, (), 0.0),
    (4, (), 4.0),
    (0, ("cxl", "cxl"), 1.0),
    (1, ("cxl", "cxl", "nvme"), 1 + 0.5 + 0.25),
    (3, ("cxl", "cxl"), 3.0),  # the store adds nothing past the device run
    (0, ("nvme", "other"), 0.5),  # unknown tiers get the disk credit
])
def test_credited_blocks(device: int, store: tuple[str, ...], expected: float) -> None:
    assert credited_blocks(device, store_credit_prefix(store, PLAIN)) == pytest.approx(expected)


@pytest.mark.parametrize(("settings", "workers", "device", "costs"), [
    # Prefix only: 10 prompt blocks, a holds 6 of them.
    (PLAIN, [WorkerState("a"), WorkerState("b")], {"a": 6}, {"a": 4.0, "b": 10.0}),
    # Prefill weight scales the prefix term only.
    (dataclasses.replace(PLAIN, prefill_weight=2.0, running_weight=1.0),
     [WorkerState("a", running=3), WorkerState("b")], {"a": 6}, {"a": 11.0, "b": 20.0}),
    # Queued requests and pending prefill blocks count with their weights.
    (dataclasses.replace(PLAIN, waiting_weight=5.0, pending_prefill_weight=1.0),
     [WorkerState("a", waiting=2, pending_prefill_blocks=7), WorkerState("b")], {"a": 10},
     {"a": 17.0, "b": 10.0}),
    # Used blocks.
    (dataclasses.replace(PLAIN, used_block_weight=0.01),
     [WorkerState("a", used_blocks=500)], {}, {"a": 15.0}),
])
def test_costs(settings: RoutingSettings, workers: list[WorkerState], device: dict[str, int],
               costs: dict[str, float]) -> None:
    scores = score(10.0, Overlaps(device, ()), workers, settings)
    assert {s.worker_id: s.cost for s in scores} == pytest.approx(costs)
    assert [s.cost for s in scores] == sorted(s.cost for s in scores)


@pytest.mark.parametrize(("workers", "chosen", "all_busy"), [
    ([WorkerState("a", used_blocks=99, total_blocks=100), WorkerState("b")], "b", False),
    ([WorkerState("a", waiting=64), WorkerState("b", running=1)], "b", False),
    ([WorkerState("a", waiting=70), WorkerState("b", waiting=80)], "a", True),
])
def test_busy_workers_are_excluded(workers: list[WorkerState], chosen: str,
                                   all_busy: bool) -> None:
    settings = RoutingSettings()
    scores = score(10.0, Overlaps({"a": 10}, ()), workers, settings)
    choice, busy = pick(scores, settings, random.Random(0))
    assert (choice.worker_id, busy) == (chosen, all_busy)


def test_temperature_spreads_choices() -> None:
    workers = [WorkerState("a"), WorkerState("b", running=1)]
    scores = score(10.0, Overlaps({}, ()), workers, RoutingSettings())
    rng = random.Random(1)
    greedy = {pick(scores, RoutingSettings(), rng)[0].worker_id for _ in range(50)}
    warm = {pick(scores, RoutingSettings(temperature=1.0), rng)[0].worker_id for _ in range(50)}
    assert greedy == {"a"} and warm == {"a", "b"}


@pytest.mark.parametrize(("bad", "message"), [
    ({"policy": "nope"}, "policy: 'nope' is not one of"),
    ({"cxl_credit": 1.5}, "cxl_credit: must be <= 1"),
    ({"running_weight": -1.0}, "running_weight: must be >= 0"),
    ({"busy_block_fraction": 0.0}, "busy_block_fraction: must be > 0"),
])
def test_settings_validation(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingSettings(**bad)  # type: ignore[arg-type]
