"""Which transport a KV client picks when it connects (tandem.kvclient.client.route): same host
by host identity or the ``same_host`` setting, unless the arena cannot be used here; the data
plane when the store offers one, unless ``force_grpc``."""

from __future__ import annotations

import pytest

from tandem.kvclient.client import Route, StoreInfo, route
from tandem.kvclient.settings import KVClientSettings
from tandem.v1 import common_pb2, kvstore_pb2

ARENA = "/dev/shm/arena"
CXL = kvstore_pb2.TierInfo(tier=common_pb2.STORAGE_TIER_CXL, path=ARENA)
NVME = kvstore_pb2.TierInfo(tier=common_pb2.STORAGE_TIER_NVME, path="/var/tmp/kv")


def store(host: str = "here", data_port: int = 50081,
          tiers: tuple[kvstore_pb2.TierInfo, ...] = (CXL, NVME)) -> StoreInfo:
    return StoreInfo(host, 1 << 20, list(tiers), data_port)


CASES = [
    # settings, store, arena usable here, route
    ("same host id", KVClientSettings(), store(), True, Route(True, ARENA, True)),
    ("another host", KVClientSettings(), store("there"), True, Route(False, None, True)),
    ("arena not usable", KVClientSettings(), store(), False, Route(False, None, True)),
    ("no cxl tier", KVClientSettings(), store(tiers=(NVME,)), False, Route(True, None, True)),
    ("said same host", KVClientSettings(same_host=True), store("there"), True,
     Route(True, ARENA, True)),
    ("said same host, arena not usable", KVClientSettings(same_host=True), store(), False,
     Route(False, None, True)),
    ("said another host", KVClientSettings(same_host=False), store(), True,
     Route(False, None, True)),
    ("no data plane", KVClientSettings(same_host=False), store(data_port=0), True,
     Route(False, None, False)),
    ("forced gRPC", KVClientSettings(same_host=False, force_grpc=True), store(), True,
     Route(False, None, False)),
    ("same host, forced gRPC", KVClientSettings(force_grpc=True), store(), True,
     Route(True, ARENA, False)),
]


@pytest.mark.parametrize(("settings", "info", "usable", "expected"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_route(settings: KVClientSettings, info: StoreInfo, usable: bool,
               expected: Route) -> None:
    asked: list[str] = []

    def arena_usable(path: str) -> bool:
        asked.append(path)
        return usable

    assert route(settings, "here", info, arena_usable) == expected
    assert set(asked) <= {ARENA}
