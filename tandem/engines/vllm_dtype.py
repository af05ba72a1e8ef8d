"""The dtype a vLLM worker runs (``--dtype``), and the KV bytes per token that follow from it.

``auto`` (the default) resolves, per machine:

| device | native bf16 (AVX512-BF16 or AMX) | → |
|---|---|---|
| CPU | no | ``float32`` |
| CPU | yes | the model's dtype (its ``config.json``) |
| GPU | — | the model's dtype |

On a CPU without native bf16, vLLM's bf16 linear layers fall back to PyTorch's slow path
(measured on an AVX2-only core: 8.5 GFLOP/s against 68 in float32). A model whose config
names no dtype is left to vLLM's own ``auto``. Every worker resolves on its own host; workers
that exchange KV blocks must resolve to the same dtype (a block's byte size follows it, and
the connector refuses a payload of another size).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
CPU_BLOCK_TOKENS = 128
"""Tokens in one KV block of vLLM's CPU build (its platform's default block size): one block of
the KV store."""
PAGE_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class DtypeHost:
    """What ``auto`` reads of the machine."""

    on_cpu: bool
    """vLLM runs on the CPU build (no GPU found)."""
    native_bf16: bool
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles): vLLM's fast CPU kernels."""


def resolve_dtype(choice: str, host: DtypeHost, model_dtype: str | None) -> str:
    """The dtype vLLM is given for ``choice`` on ``host`` (``model_dtype``: the model config's,
    None when it names none)."""
    if choice != "auto":
        return choice
    if host.on_cpu and not host.native_bf16:
        return "float32"
    return model_dtype or "auto"


def model_dtype(model_dir: str | Path) -> str | None:
    """The dtype a Hugging Face ``config.json`` names (``dtype``, formerly ``torch_dtype``); None
    without a config (the engine's start says the model is missing)."""
    path = Path(model_dir, "config.json")
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    named = config.get("dtype") or config.get("torch_dtype")
    return str(named) if named else None


def this_host() -> DtypeHost:
    """This machine, as vLLM sees it (its platform detection and its CPU's bf16 check)."""
    import torch
    from vllm.platforms import current_platform

    return DtypeHost(
        on_cpu=current_platform.is_cpu(),
        native_bf16=bool(
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        ),
    )


def host_dtype(choice: str, model_dir: str | Path) -> str:
    """``resolve_dtype`` on this machine for the model in ``model_dir`` (an explicit choice
    reads neither)."""
    if choice != "auto":
        return choice
    return resolve_dtype(choice, this_host(), model_dtype(model_dir))


def kv_bytes_per_token(model_dir: str | Path, dtype: str) -> int:
    """KV cache bytes one token takes in ``dtype`` (a concrete dtype, not ``auto``): keys and
    values of every layer's KV heads (a standard attention model's config)."""
    config = json.loads(Path(model_dir, "config.json").read_text())
    heads = config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
    return 2 * config["num_hidden_layers"] * heads * head_dim * _ITEMSIZE[dtype]


def store_slot_bytes(model_dir: str | Path, dtype: str, least: int) -> int:
    """The KV store's arena slot for workers of ``dtype`` (a concrete one) on vLLM's CPU build:
    one block, page-aligned, and never under ``least``. A block larger than the slot skips the
    cxl tier (a float32 block of SmolLM2-135M is 5.6 MiB, twice bfloat16's). ``auto`` (left to
    vLLM, its size unknown here) keeps ``least``."""
    if dtype not in _ITEMSIZE:
        return least
    block = kv_bytes_per_token(model_dir, dtype) * CPU_BLOCK_TOKENS
    return max(least, -(-block // PAGE_BYTES) * PAGE_BYTES)
