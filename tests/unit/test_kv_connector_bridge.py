"""tandem's vLLM KV connector opens its store bridge when the engine starts, not in the first
engine step that needs it (that cost ~25 ms of the first hand-off's load)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

from tandem.kvconnector import connector as connector_module
from tandem.kvconnector.connector import TandemConnector
from tandem.kvconnector.settings import ConnectorSettings


class FakeBridge:
    made: list[FakeBridge] = []
    fail = False

    def __init__(self, address: str, settings: Any = None) -> None:
        if FakeBridge.fail:
            raise OSError("no thread for you")
        self.address = address
        FakeBridge.made.append(self)

    def close(self) -> None:
        return None


@pytest.fixture(autouse=True)
def fake_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeBridge.made = []
    FakeBridge.fail = False
    monkeypatch.setattr(connector_module, "StoreBridge", FakeBridge)


def make(role: KVConnectorRole, **settings: Any) -> TandemConnector:
    extra = ConnectorSettings(store_address="127.0.0.1:1", model="m", **settings)
    config = SimpleNamespace(
        kv_transfer_config=SimpleNamespace(kv_connector_extra_config=extra.to_extra_config()),
        cache_config=SimpleNamespace(block_size=16, kv_cache_layout="NHD"))
    return TandemConnector(config, role, None)  # type: ignore[arg-type]


def caches() -> dict[str, torch.Tensor]:
    return {f"layer.{i}": torch.zeros(4, 2, 16, 8) for i in range(2)}  # [B, H, N, C]


def test_the_scheduler_side_opens_its_bridge_at_start() -> None:
    make(KVConnectorRole.SCHEDULER)
    assert [bridge.address for bridge in FakeBridge.made] == ["127.0.0.1:1"]


@pytest.mark.parametrize("settings", [{"lookup": False}, {"load": False}])
def test_a_scheduler_that_never_looks_up_opens_no_bridge(settings: dict[str, bool]) -> None:
    make(KVConnectorRole.SCHEDULER, **settings)
    assert FakeBridge.made == []


def test_the_worker_side_opens_its_bridge_with_the_caches() -> None:
    connector = make(KVConnectorRole.WORKER)
    assert FakeBridge.made == []  # vLLM makes the worker's connector before its caches
    connector.register_kv_caches(caches())
    assert len(FakeBridge.made) == 1
    assert connector.bridge is FakeBridge.made[0]  # the steps use that one


def test_a_bridge_that_cannot_open_at_start_is_tried_again_on_use() -> None:
    FakeBridge.fail = True
    connector = make(KVConnectorRole.WORKER)
    connector.register_kv_caches(caches())  # no error: the engine starts
    FakeBridge.fail = False
    assert connector.bridge is FakeBridge.made[0]
