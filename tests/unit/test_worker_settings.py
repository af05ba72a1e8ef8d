"""The worker's settings: the nested mock settings keep their flat ``--mock-*`` flags and
``TANDEM_<ROLE>_MOCK_*`` variables; ``--engine`` is checked against the engine registry."""

from __future__ import annotations

import typing

import pytest

from services.decode.settings import DecodeSettings
from services.prefill.settings import PrefillSettings
from tandem.service.settings import load_settings
from tandem.worker.engines import ENGINES
from tandem.worker.settings import EngineName, MockWorkerSettings, WorkerSettings


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, MockWorkerSettings()),
    (["--mock-profile", "h100-llama3-70b", "--mock-speedup", "10"], {},
     MockWorkerSettings(profile="h100-llama3-70b", speedup=10.0)),
    (["--mock-decode-ms", "1", "--mock-prefill-ms-per-token", "0.2",
      "--mock-kv-block-bytes", "8192"], {},
     MockWorkerSettings(decode_ms=1.0, prefill_ms_per_token=0.2, kv_block_bytes=8192)),
    ([], {"TANDEM_DECODE_MOCK_PROFILE": "cpu-smollm2-135m", "TANDEM_DECODE_MOCK_DECODE_MS": "3"},
     MockWorkerSettings(profile="cpu-smollm2-135m", decode_ms=3.0)),
    (["--mock-decode-ms", "4"], {"TANDEM_DECODE_MOCK_DECODE_MS": "3"},
     MockWorkerSettings(decode_ms=4.0)),
    (["--mock-fail-rate", "0.5", "--mock-max-num-seqs", "8"], {},
     MockWorkerSettings(fail_rate=0.5, max_num_seqs=8)),
    (["--mock-block-size", "64", "--mock-num-blocks", "512"], {},
     MockWorkerSettings(block_size=64, num_blocks=512)),
])
def test_mock_flags_and_variables_fill_the_nested_settings(
        argv: list[str], environ: dict[str, str], expected: MockWorkerSettings) -> None:
    settings = load_settings(DecodeSettings, "tandem_decode", argv, environ)
    assert settings.mock == expected


def test_the_prefill_workers_variables_carry_its_prefix() -> None:
    settings = load_settings(PrefillSettings, "tandem_prefill", ["--kvstore-address", "k:1"],
                             {"TANDEM_PREFILL_MOCK_SPEEDUP": "2"})
    assert settings.mock.speedup == 2.0


def test_the_engine_choices_are_the_registry() -> None:
    assert typing.get_args(EngineName) == tuple(ENGINES)


@pytest.mark.parametrize("engine", ["vllm", "mock"])
def test_every_registered_engine_is_accepted(engine: EngineName) -> None:
    assert WorkerSettings(engine=engine).engine == engine


def test_an_unknown_engine_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"^engine: 'tgi' is not one of vllm, mock$"):
        WorkerSettings(engine="tgi")  # type: ignore[arg-type]
