"""Whole blocks between a paged cache (block-major, like vLLM's CPU attention) and payloads."""

from __future__ import annotations

import pytest
import torch

from tandem.kvconnector.layout import BlockLayout


def caches(seed: int, num_blocks: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.self_attn.attn": torch.randn(
        num_blocks, 3, 4, 16, generator=generator).to(torch.bfloat16) for i in range(3)}


def test_a_block_round_trips_between_two_engines_exactly() -> None:
    source, target = BlockLayout(caches(1)), BlockLayout(caches(2))
    payloads = source.gather_many([4, 1])
    assert all(len(p) == source.block_bytes == 3 * 3 * 4 * 16 * 2 for p in payloads)
    target.scatter(0, payloads[0])
    target.scatter(5, bytes(payloads[1]))
    for src, dst in zip(source.layers, target.layers, strict=True):
        assert torch.equal(src[4], dst[0]) and torch.equal(src[1], dst[5])
    untouched = BlockLayout(caches(2))
    for dst, fresh in zip(target.layers, untouched.layers, strict=True):
        assert torch.equal(dst[2], fresh[2])  # no other block changed


def test_a_payload_of_another_shape_is_refused() -> None:
    layout = BlockLayout(caches(1))
    with pytest.raises(ValueError, match="same model"):
        layout.scatter(0, b"\0" * (layout.block_bytes - 2))


def test_layers_must_agree() -> None:
    bad = caches(1)
    bad["extra"] = torch.zeros(7, 3, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="disagree"):
        BlockLayout(bad)
