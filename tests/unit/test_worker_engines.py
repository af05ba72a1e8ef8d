"""The engine registry: one builder per engine name, each mapping the worker's settings to its
engine's; vLLM's is imported only when a vLLM worker is built."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.decode.settings import DecodeSettings
from services.prefill.settings import PrefillSettings
from tandem.engines.mock import MockEngine
from tandem.kvconnector.settings import ConnectorSettings
from tandem.model import ModelSettings
from tandem.telemetry import TelemetrySettings
from tandem.worker.engines import ENGINES, build_engine
from tandem.worker.engines.vllm import vllm_settings
from tandem.worker.settings import MockWorkerSettings


def test_the_registry_names_every_engine() -> None:
    assert list(ENGINES) == ["vllm", "mock"]


def test_the_mock_builder_makes_a_simulated_engine_from_the_mock_flags() -> None:
    settings = DecodeSettings(
        engine="mock", model=ModelSettings(served_model_name="m", max_model_len=2048),
        kvstore_address="kvstore:50080", kv_host_id="h",
        mock=MockWorkerSettings(profile="cpu-smollm2-135m", speedup=4.0, decode_ms=2.0,
                                prefill_ms_per_token=0.5, kv_block_bytes=1024,
                                max_num_seqs=8, fail_rate=0.25, block_size=64,
                                num_blocks=512))
    engine = build_engine(settings, "decode")
    assert isinstance(engine, MockEngine)
    built = engine.settings
    assert (built.model, built.profile, built.speedup, built.max_model_len) == \
        ("m", "cpu-smollm2-135m", 4.0, 2048)
    assert (built.max_num_seqs, built.fail_rate) == (8, 0.25)
    assert (built.block_size, built.num_blocks) == (64, 512)
    assert built.decode_time_per_step_s == pytest.approx(0.002)
    assert built.prefill_time_per_token_s == pytest.approx(0.0005)
    assert (built.kvstore_address, built.kvstore_host_id, built.kv_block_bytes) == \
        ("kvstore:50080", "h", 1024)


def test_the_vllm_builder_without_a_store_keeps_the_kv_to_the_engine() -> None:
    built = vllm_settings(DecodeSettings(
        model=ModelSettings(model_dir="/models/x", served_model_name="m", max_model_len=1024),
        kv_cache_gib=2, cpu_cores="1", max_num_seqs=8, max_num_batched_tokens=512,
        telemetry=TelemetrySettings(otlp_endpoint="collector:4317")), "decode")
    assert (built.model_dir, built.served_model_name, built.max_model_len, built.kv_cache_gib,
            built.cpu_cores, built.max_num_seqs, built.max_num_batched_tokens,
            built.otlp_traces_endpoint) == \
        ("/models/x", "m", 1024, 2, "1", 8, 512, "collector:4317")
    assert built.kv_connector is None


def test_the_vllm_builder_with_a_store_adds_the_connector_of_its_role() -> None:
    built = vllm_settings(PrefillSettings(
        model=ModelSettings(served_model_name="m"), kvstore_address="kvstore:50080",
        kv_host_id="h", kv_lookup=False,
        telemetry=TelemetrySettings(otlp_endpoint="collector:4317")), "prefill")
    assert built.kv_connector == ConnectorSettings(
        store_address="kvstore:50080", model="m", save=True, lookup=False,
        otlp_endpoint="collector:4317", service_name="tandem-prefill", host_id="h")


def test_a_worker_imports_vllm_only_to_build_a_vllm_engine() -> None:
    probe = ("import sys, services.decode.app, services.prefill.app, services.decode.fleet; "
             "print(sorted(m for m in sys.modules if m == 'vllm' or 'vllm_engine' in m))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_vllm_builder_passes_the_dtype() -> None:
    built = vllm_settings(DecodeSettings(model=ModelSettings(served_model_name="m"),
                                         dtype="float32"), "decode")
    assert built.dtype == "float32"
