"""One test per routing policy."""

from __future__ import annotations

import typing
from collections import Counter

import pytest

from services.router.core.decision import RouteQuery, WorkerState
from services.router.core.index import BlockIndex
from services.router.core.policies import POLICIES, make_policy
from services.router.core.routing_settings import PolicyName, RoutingSettings

HASHES = [n.to_bytes(16, "big") for n in range(1, 9)]
QUERY = RouteQuery(HASHES, prompt_tokens=8 * 16, block_size=16)
WORKERS = [WorkerState("a", running=2), WorkerState("b"), WorkerState("c", running=1)]


def test_kv_prefers_the_cached_prefix_and_explains() -> None:
    index = BlockIndex()
    index.stored("worker:c", HASHES[:6])
    decision = make_policy("kv", index).choose(QUERY, WORKERS, RoutingSettings())
    assert decision.worker_id == "c" and decision.chosen.device_overlap_blocks == 6
    assert decision.candidates[0].worker_id == "c"
    attributes = decision.span_attributes(top=2)
    assert attributes["tandem.route.worker_id"] == "c" and "tandem.route.top.1" in attributes


def test_round_robin_cycles() -> None:
    policy = make_policy("round_robin", BlockIndex())
    chosen = [policy.choose(QUERY, WORKERS, RoutingSettings()).worker_id for _ in range(6)]
    assert chosen == ["a", "b", "c", "a", "b", "c"]


def test_random_spreads_and_is_seedable() -> None:
    first = make_policy("random", BlockIndex(), seed=3)
    second = make_policy("random", BlockIndex(), seed=3)
    picks = [first.choose(QUERY, WORKERS, RoutingSettings()).worker_id for _ in range(60)]
    assert picks == [second.choose(QUERY, WORKERS, RoutingSettings()).worker_id
                     for _ in range(60)]
    assert set(Counter(picks)) == {"a", "b", "c"}


def test_least_loaded_takes_the_idlest() -> None:
    decision = make_policy("least_loaded", BlockIndex()).choose(QUERY, WORKERS,
                                                                RoutingSettings())
    assert decision.worker_id == "b"


def test_every_registered_policy_is_built_by_its_name() -> None:
    for name, policy in POLICIES.items():
        built = make_policy(name, BlockIndex())
        assert type(built) is policy and built.name == name


def test_an_unknown_policy_is_refused_by_the_factory_and_the_settings() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_policy("fastest", BlockIndex())
    with pytest.raises(ValueError, match="policy: 'fastest' is not one of kv, round_robin, "
                                         "random, least_loaded"):
        RoutingSettings(policy="fastest")  # type: ignore[arg-type]


def test_the_policy_choices_are_the_registry() -> None:
    assert typing.get_args(PolicyName) == tuple(POLICIES)
