"""A worker's --kv-host-id reaches every KV client it makes (vLLM's connector, the mock
engine's transfers), so containers of one host can share the store's arena."""

from __future__ import annotations

import pytest

from services.decode.settings import DecodeSettings
from tandem.kvconnector.settings import ConnectorSettings
from tandem.worker.engines import build_engine


@pytest.mark.parametrize("host_id", ["", "compose-host"])
def test_the_connector_carries_the_host_id_through_vllm(host_id: str) -> None:
    settings = ConnectorSettings(store_address="kvstore:50080", model="m", host_id=host_id)
    carried = ConnectorSettings.from_extra_config(settings.to_extra_config())
    assert carried.client_settings().host_id == host_id


def test_the_mock_engine_gets_the_workers_host_id() -> None:
    engine = build_engine(DecodeSettings(engine="mock", kvstore_address="kvstore:50080",
                                         kv_host_id="compose-host"), "decode")
    assert engine.settings.kvstore_host_id == "compose-host"  # type: ignore[attr-defined]
