"""``--dtype auto``: what it resolves to per machine and model, and the KV bytes per token
that follow (tandem.engines.vllm_dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.engines.vllm_dtype import (
    DtypeHost,
    kv_bytes_per_token,
    model_dtype,
    resolve_dtype,
    store_slot_bytes,
)
from tandem.worker.settings import DtypeChoice

CPU, CPU_BF16, GPU = DtypeHost(True, False), DtypeHost(True, True), DtypeHost(False, False)


@pytest.mark.parametrize(
    ("choice", "host", "model", "dtype"),
    [
        ("bfloat16", CPU, "bfloat16", "bfloat16"),  # asked for: kept, even where it is slow
        ("float32", GPU, "bfloat16", "float32"),
        ("auto", CPU, "bfloat16", "float32"),  # AVX2 only: bf16 falls back to PyTorch's slow GEMM
        ("auto", CPU, "float16", "float32"),
        ("auto", CPU, None, "float32"),
        ("auto", CPU_BF16, "bfloat16", "bfloat16"),  # AVX512-BF16 or AMX: the model's own
        ("auto", CPU_BF16, "float32", "float32"),
        ("auto", GPU, "bfloat16", "bfloat16"),  # a GPU: the model's dtype
        ("auto", GPU, "float16", "float16"),
        ("auto", GPU, None, "auto"),  # the config names none: vLLM's own choice
    ],
)
def test_the_vllm_dtype_auto_follows_the_machine_and_the_model(
    choice: DtypeChoice, host: DtypeHost, model: str | None, dtype: str
) -> None:
    assert resolve_dtype(choice, host, model) == dtype


@pytest.mark.parametrize(
    ("config", "dtype"),
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float16"}, "float16"),  # transformers before 4.56
        ({}, None),
    ],
)
def test_the_model_dtype_is_its_configs(
    tmp_path: Path, config: dict[str, str], dtype: str | None
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_dtype(tmp_path) == dtype
    assert model_dtype(tmp_path / "missing") is None


@pytest.mark.parametrize(("dtype", "per_token"), [("bfloat16", 23_040), ("float32", 46_080)])
def test_kv_bytes_per_token_follow_the_config_and_the_dtype(
    tmp_path: Path, dtype: str, per_token: int
) -> None:
    smollm2_config(tmp_path)
    assert kv_bytes_per_token(tmp_path, dtype) == per_token


def smollm2_config(folder: Path) -> None:
    """SmolLM2-135M's shape: 30 layers x (K, V) x 3 KV heads x 64 dims."""
    (folder / "config.json").write_text(json.dumps({
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "hidden_size": 576}))


@pytest.mark.parametrize(
    ("dtype", "least", "slot"),
    [
        ("bfloat16", 3 << 20, 3 << 20),  # a 2,949,120-byte block fits the default slot
        ("float32", 3 << 20, 5_898_240),  # twice that: the slot grows to one block
        ("float32", 8 << 20, 8 << 20),  # never under what is asked
        ("float16", 4096, 2_949_120),  # one block, page-aligned (720 pages)
        ("auto", 3 << 20, 3 << 20),  # left to vLLM (a GPU, a config naming none): unknown
    ],
)
def test_the_store_slot_holds_one_cpu_block_of_the_workers_dtype(
    tmp_path: Path, dtype: str, least: int, slot: int
) -> None:
    smollm2_config(tmp_path)
    assert store_slot_bytes(tmp_path, dtype, least) == slot
    assert slot % 4096 == 0
