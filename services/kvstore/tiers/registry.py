"""The kinds of tier a store can run (``--tiers``), by name: each builds its tier from the
service's settings."""

from __future__ import annotations

from collections.abc import Callable

from services.kvstore.settings import KVStoreSettings
from services.kvstore.tiers import arena, files
from services.kvstore.tiers.base import Tier

TierBuilder = Callable[[str, KVStoreSettings], Tier]

TIER_KINDS: dict[str, TierBuilder] = {"cxl": arena.build, "nvme": files.build}


def build_tiers(settings: KVStoreSettings) -> list[Tier]:
    """The store's tiers, fastest first, as ``--tiers`` names them."""
    return [TIER_KINDS[name](name, settings) for name in settings.tiers]
