"""Whole blocks between vLLM's paged caches and payloads, in every layout vLLM's attention
backends use: the caches are made by vLLM's own allocator (``allocate_kv_cache``) on CPU
tensors, as the CPU build (``LBHNC``) and the GPU backends (``LBNHC`` by default, block-outermost
packing, kernel blocks smaller than the scheduler's, MLA's single latent head) lay them out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from vllm.v1.kv_cache_interface import (
    AttentionSpec,
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
    KVCacheTensor,
    MLAAttentionSpec,
    compute_layout_strides,
)
from vllm.v1.kv_cache_layout import KVCacheLayout
from vllm.v1.worker.utils import allocate_kv_cache

from tandem.kvconnector.layout import BlockLayout

NUM_BLOCKS = 6
BLOCK_SIZE = 16
LAYERS = [f"model.layers.{i}.self_attn.attn" for i in range(3)]
ATTENTION = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=3, head_size=8,
                              dtype=torch.bfloat16)
MLA = MLAAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=1, head_size=24, dtype=torch.bfloat16)
CPU = KVCacheLayout.LBHNC  # the CPU backend's only layout
# (layout, kernel block size): every layout, and kernel blocks where vLLM allows them.
CASES = [(layout, BLOCK_SIZE) for layout in KVCacheLayout] + [
    (layout, BLOCK_SIZE // 2) for layout in KVCacheLayout
    if layout.is_layer_compact and layout.is_block_compact]


def engine_caches(layout: KVCacheLayout, kernel_block_size: int = BLOCK_SIZE,
                  spec: AttentionSpec = ATTENTION) -> dict[str, torch.Tensor]:
    """The per-layer views vLLM hands ``register_kv_caches`` for ``layout``."""
    layer_stride, block_stride, *_ = compute_layout_strides(spec, NUM_BLOCKS, len(LAYERS), layout)
    tensor = KVCacheTensor(size=spec.page_size_bytes * NUM_BLOCKS * len(LAYERS), layers=LAYERS,
                           layer_stride=layer_stride, block_stride=block_stride)
    config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[tensor],
                           kv_cache_groups=[KVCacheGroupSpec(LAYERS, spec)],
                           kv_cache_layout=layout.name)
    return allocate_kv_cache(config, torch.device("cpu"), layout, [kernel_block_size])


def logical(cache: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, C]`` of a view, kernel blocks folded back into their blocks."""
    per_block = cache.shape[0] // NUM_BLOCKS
    split = cache.unflatten(0, (NUM_BLOCKS, per_block)).transpose(1, 2)
    return split.reshape(NUM_BLOCKS, cache.shape[1], -1, cache.shape[3])


def filled(layout: KVCacheLayout, kernel_block_size: int, seed: int,
           spec: AttentionSpec = ATTENTION) -> dict[str, torch.Tensor]:
    """Caches of ``layout`` holding the same logical values as any other of the same seed."""
    caches = engine_caches(layout, kernel_block_size, spec)
    generator = torch.Generator().manual_seed(seed)
    for name in LAYERS:
        cache = caches[name]
        values = torch.randn(logical(cache).shape, generator=generator).to(cache.dtype)
        per_block = cache.shape[0] // NUM_BLOCKS
        cache.unflatten(0, (NUM_BLOCKS, per_block)).transpose(1, 2).copy_(
            values.unflatten(2, (per_block, -1)))
    return caches


@pytest.mark.parametrize(("layout", "kernel_block_size"), CASES,
                         ids=[f"{layout.name}-kernel{size}" for layout, size in CASES])
def test_a_block_round_trips_in_every_layout(layout: KVCacheLayout,
                                             kernel_block_size: int) -> None:
    reference = BlockLayout(filled(CPU, BLOCK_SIZE, 1), NUM_BLOCKS)
    source = BlockLayout(filled(layout, kernel_block_size, 1), NUM_BLOCKS)
    assert source.block_bytes == reference.block_bytes == 3 * ATTENTION.page_size_bytes
    payloads = source.gather_many([4, 1])
    # The payload is the block in logical order: the same bytes as the CPU build's.
    assert [bytes(p) for p in payloads] == [bytes(p) for p in reference.gather_many([4, 1])]
    target_caches = filled(layout, kernel_block_size, 2)
    target = BlockLayout(target_caches, NUM_BLOCKS)
    target.scatter(0, payloads[0])
    target.scatter(5, bytes(payloads[1]))
    untouched = filled(layout, kernel_block_size, 2)
    source_caches = filled(layout, kernel_block_size, 1)
    for name in LAYERS:
        loaded, fresh, src = (logical(c[name]) for c in (target_caches, untouched, source_caches))
        assert torch.equal(loaded[0], src[4]) and torch.equal(loaded[5], src[1])
        assert torch.equal(loaded[1:5], fresh[1:5])  # no other block changed


def test_an_mla_block_round_trips_between_layouts() -> None:
    source = BlockLayout(filled(CPU, BLOCK_SIZE, 1, MLA), NUM_BLOCKS)
    target_caches = filled(KVCacheLayout.BLNHC, BLOCK_SIZE, 2, MLA)
    target = BlockLayout(target_caches, NUM_BLOCKS)
    assert source.block_bytes == 3 * BLOCK_SIZE * 24 * 2
    target.scatter(3, source.gather_many([2])[0])
    for name, cache in filled(CPU, BLOCK_SIZE, 1, MLA).items():
        assert torch.equal(logical(target_caches[name])[3], logical(cache)[2])


def test_layers_that_alias_one_cache_are_copied_once() -> None:
    caches = filled(CPU, BLOCK_SIZE, 1)
    shared = {**caches, "model.layers.3.self_attn.attn": caches[LAYERS[0]]}
    assert BlockLayout(shared, NUM_BLOCKS).layer_names == LAYERS


def test_a_payload_of_another_shape_is_refused() -> None:
    layout = BlockLayout(filled(CPU, BLOCK_SIZE, 1))
    with pytest.raises(ValueError, match="same model"):
        layout.scatter(0, b"\0" * (layout.block_bytes - 2))


def test_layers_must_agree() -> None:
    bad = filled(CPU, BLOCK_SIZE, 1)
    bad["extra"] = torch.zeros(7, 3, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="disagree"):
        BlockLayout(bad)
    with pytest.raises(ValueError, match="multiple"):
        BlockLayout(bad, NUM_BLOCKS)


def test_a_cache_that_is_not_a_page_view_is_refused() -> None:
    with pytest.raises(ValueError, match="page"):  # e.g. a raw backing tensor (Mamba state)
        BlockLayout({"raw": torch.zeros(4096, dtype=torch.int8)})


def fake_connector(config: KVCacheConfig) -> SimpleNamespace:
    """What ``TandemConnector.register_kv_caches`` reads of its connector (and the store
    bridge it opens, which these tests leave alone)."""
    return SimpleNamespace(
        _kv_cache_config=config, settings=SimpleNamespace(store_address="kvstore:1"),
        _vllm_config=SimpleNamespace(cache_config=SimpleNamespace(kv_cache_layout="LBNHC")),
        _open_bridge=lambda: None)


def test_the_connector_takes_the_block_count_and_the_layers_from_vllms_cache_config() -> None:
    from tandem.kvconnector.connector import TandemConnector

    caches = filled(KVCacheLayout.LBNHC, BLOCK_SIZE // 2, 1)  # views count 2 kernel blocks each
    drafts = {"drafter.attn": torch.zeros(NUM_BLOCKS, 3, BLOCK_SIZE, 16, dtype=torch.bfloat16)}
    config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(LAYERS, ATTENTION),
        KVCacheGroupSpec(list(drafts), ATTENTION, enable_kv_transfer=False)])
    connector = fake_connector(config)
    TandemConnector.register_kv_caches(connector, {**caches, **drafts})  # type: ignore[arg-type]
    layout = connector._layout
    assert (layout.num_blocks, layout.layer_names) == (NUM_BLOCKS, LAYERS)
    assert layout.block_bytes == 3 * ATTENTION.page_size_bytes


def test_the_connector_refuses_a_model_with_several_kv_cache_groups() -> None:
    from tandem.kvconnector.connector import TandemConnector

    sliding = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=3, head_size=8,
                                dtype=torch.bfloat16, sliding_window=64)
    config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=[
        KVCacheGroupSpec(LAYERS[:2], ATTENTION), KVCacheGroupSpec(LAYERS[2:], sliding)])
    connector = fake_connector(config)
    with pytest.raises(ValueError, match="one KV cache group"):
        TandemConnector.register_kv_caches(connector, filled(CPU, BLOCK_SIZE, 1))  # type: ignore[arg-type]
