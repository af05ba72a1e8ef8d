"""Routing policies behind one interface (``Policy.choose``); ``make_policy`` by name."""

from __future__ import annotations

from random import Random

from services.router.index import BlockIndex
from services.router.policies.base import Policy
from services.router.policies.kv import KVPolicy
from services.router.policies.least_loaded import LeastLoadedPolicy
from services.router.policies.random import RandomPolicy
from services.router.policies.round_robin import RoundRobinPolicy


def make_policy(name: str, index: BlockIndex, seed: int | None = None) -> Policy:
    """The policy called ``name`` (see routing_settings.POLICIES)."""
    rng = Random(seed)
    if name == "kv":
        return KVPolicy(index, rng)
    if name == "round_robin":
        return RoundRobinPolicy(rng)
    if name == "random":
        return RandomPolicy(rng)
    if name == "least_loaded":
        return LeastLoadedPolicy(rng)
    raise ValueError(f"unknown routing policy {name!r}")


__all__ = ["KVPolicy", "LeastLoadedPolicy", "Policy", "RandomPolicy", "RoundRobinPolicy",
           "make_policy"]
