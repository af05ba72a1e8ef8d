"""Routing policies behind one interface (``Policy.choose``), registered by name in
``POLICIES``; ``make_policy`` builds one."""

from __future__ import annotations

from random import Random

from services.router.core.index import BlockIndex
from services.router.core.policies.base import Clock, Policy, no_clock
from services.router.core.policies.kv import KVPolicy
from services.router.core.policies.least_loaded import LeastLoadedPolicy
from services.router.core.policies.random import RandomPolicy
from services.router.core.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[Policy]] = {
    KVPolicy.name: KVPolicy,
    RoundRobinPolicy.name: RoundRobinPolicy,
    RandomPolicy.name: RandomPolicy,
    LeastLoadedPolicy.name: LeastLoadedPolicy,
}
"""Every routing policy by its ``--routing-policy`` name; a new policy is one file and one
entry here."""


def make_policy(name: str, index: BlockIndex, seed: int | None = None,
                clock: Clock = no_clock) -> Policy:
    """The policy called ``name`` (a key of ``POLICIES``); ``clock`` times its decisions."""
    policy = POLICIES.get(name)
    if policy is None:
        raise ValueError(f"unknown routing policy {name!r}")
    return policy.build(index, Random(seed), clock)


__all__ = ["POLICIES", "KVPolicy", "LeastLoadedPolicy", "Policy", "RandomPolicy",
           "RoundRobinPolicy", "make_policy"]
