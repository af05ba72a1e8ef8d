"""The registry of tier kinds (``tiers.registry``): every kind that ``--tiers`` names builds
from the service's settings, in ``--tiers`` order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.kvstore.settings import KVStoreSettings
from services.kvstore.tiers.arena import ArenaTier
from services.kvstore.tiers.files import FileTier
from services.kvstore.tiers.registry import TIER_KINDS, build_tiers
from tandem.v1 import common_pb2


def settings(tmp_path: Path, tiers: tuple[str, ...]) -> KVStoreSettings:
    return dataclasses.replace(
        KVStoreSettings(), tiers=tiers, cxl_path=str(tmp_path / "arena"), slot_bytes=4096,
        cxl_capacity_bytes=3 * 4096 + 100, nvme_path=str(tmp_path / "nvme"),
        nvme_capacity_bytes=5000, populate=False)


def test_the_kinds() -> None:
    assert sorted(TIER_KINDS) == ["cxl", "nvme"]


@pytest.mark.parametrize(("tiers", "kinds", "capacities", "storage"), [
    (("cxl", "nvme"), [ArenaTier, FileTier], [3 * 4096, 5000],  # whole slots
     [common_pb2.STORAGE_TIER_CXL, common_pb2.STORAGE_TIER_NVME]),
    (("nvme",), [FileTier], [5000], [common_pb2.STORAGE_TIER_NVME]),
    (("cxl",), [ArenaTier], [3 * 4096], [common_pb2.STORAGE_TIER_CXL]),
])
def test_build_tiers(tmp_path: Path, tiers: tuple[str, ...], kinds: list[type],
                     capacities: list[int], storage: list[int]) -> None:
    built = build_tiers(settings(tmp_path, tiers))
    try:
        assert [t.name for t in built] == list(tiers)
        assert [type(t) for t in built] == kinds
        assert [t.spec.capacity_bytes for t in built] == capacities
        assert [t.storage for t in built] == storage
        assert all(t.spec.high_watermark == 0.9 and t.spec.low_watermark == 0.75
                   for t in built)
    finally:
        for tier in built:
            tier.close()
