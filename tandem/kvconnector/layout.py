"""One store block = one engine block of every layer, laid end to end, in vLLM's logical order.

What vLLM reports (0.32; ``vllm.v1.worker.utils.allocate_kv_cache``): ``register_kv_caches``
gets one view per layer, logically ``[B, H, N, C]`` (blocks, KV head slots, tokens, content in
the cache dtype; MLA: one head slot of latent content) over one shared allocation, whatever
physical layout the attention backends agreed on (``cache_config.kv_cache_layout``: the CPU
backend's ``LBHNC``, GPUs' default ``LBNHC``, block-outermost ``BL..`` packing every layer's
page of a block together, ...). The layout is in the views' strides, so nothing here assumes
one: a block of a layer is ``view[b]``, a strided ``[H, N, C]`` that the copies follow. When
the backend's kernel blocks are smaller than the scheduler's blocks the view has
``num_blocks * r`` rows (``[B * r, H, N / r, C]``; ``KVCacheConfig.num_blocks`` says ``B``),
and a block is its ``r`` kernel blocks, tokens in order.

A layer's part of a payload is that block in logical order, ``[H, N, C]`` contiguous, so a
payload does not depend on the physical layout (the CPU build's ``LBHNC`` views are contiguous:
its payloads are plain copies). The bytes of a cell stay the attention backend's own (the CPU
backend packs K and V its way, GPU backends keep ``K | V`` per token): both sides of a
transfer must run the same model, cache dtype, block size and attention backend; the payload
size checks the first three. Layers that alias one cache (cross-layer KV sharing) are copied
once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

LOGICAL_DIMS = 4
"""``[B, H, N, C]``: what vLLM hands the connector per attention layer."""


def block_major(cache: torch.Tensor, num_blocks: int | None) -> torch.Tensor:
    """A byte view of one layer with the blocks first: ``[num_blocks, H, N, C bytes]``, or
    ``[num_blocks, H, r, n, C bytes]`` over kernel blocks; it follows the cache's strides."""
    if cache.dim() != LOGICAL_DIMS or cache.stride(-1) != 1:
        raise ValueError(f"KV cache view of shape {tuple(cache.shape)} and strides "
                         f"{cache.stride()} is not vLLM's [blocks, heads, tokens, content] page")
    view = cache.view(torch.uint8)
    rows = int(view.shape[0])
    if num_blocks is None or rows == num_blocks:
        return view
    if rows % num_blocks:
        raise ValueError(f"KV cache view has {rows} blocks, not a multiple of the engine's "
                         f"{num_blocks}")
    per_block = rows // num_blocks  # kernel blocks per block: [B, r, H, n, C] -> [B, H, r, n, C]
    # A view, never a copy: r and n stay two dimensions ([H, r, n, C] is [H, N, C] in order).
    return view.unflatten(0, (num_blocks, per_block)).transpose(1, 2)


def _distinct(kv_caches: Mapping[str, torch.Tensor]) -> list[str]:
    """Layer names in sorted order, without the layers that alias an earlier one."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    names = []
    for name in sorted(kv_caches):
        cache = kv_caches[name]
        key = (cache.data_ptr(), tuple(cache.shape), cache.stride())
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


class BlockLayout:
    """Copies whole blocks between the engine's per-layer caches and flat byte payloads."""

    def __init__(self, kv_caches: Mapping[str, torch.Tensor],
                 num_blocks: int | None = None) -> None:
        """``num_blocks``: the scheduler's blocks (``KVCacheConfig.num_blocks``); unset, every
        view's first dimension must be it."""
        if not kv_caches:
            raise ValueError("no KV cache layers to transfer")
        self.layer_names = _distinct(kv_caches)
        self.layers = [block_major(kv_caches[name], num_blocks) for name in self.layer_names]
        counts = {int(layer.shape[0]) for layer in self.layers}
        if len(counts) != 1:
            raise ValueError(f"layers disagree on the number of blocks: {sorted(counts)}")
        self.num_blocks = counts.pop()
        self._shapes = [tuple(layer.shape[1:]) for layer in self.layers]
        self.layer_bytes = [layer[0].numel() for layer in self.layers]
        self.block_bytes = sum(self.layer_bytes)

    def gather(self, block_id: int, out: memoryview | bytearray) -> None:
        """Copies engine block ``block_id`` (all layers) into ``out`` (``block_bytes`` long)."""
        target = self._payload(out)
        offset = 0
        for layer, shape, size in zip(self.layers, self._shapes, self.layer_bytes, strict=True):
            target[offset:offset + size].view(shape).copy_(layer[block_id])
            offset += size

    def scatter(self, block_id: int, payload: memoryview | bytes | bytearray) -> None:
        """Copies a store payload into engine block ``block_id`` (all layers)."""
        source = self._payload(payload)
        offset = 0
        for layer, shape, size in zip(self.layers, self._shapes, self.layer_bytes, strict=True):
            layer[block_id].copy_(source[offset:offset + size].view(shape))
            offset += size

    def gather_many(self, block_ids: Sequence[int]) -> list[memoryview]:
        """Fresh payloads of several blocks."""
        out = []
        for block_id in block_ids:
            buffer = bytearray(self.block_bytes)
            self.gather(block_id, buffer)
            out.append(memoryview(buffer))
        return out

    def _payload(self, data: memoryview | bytes | bytearray) -> torch.Tensor:
        view = memoryview(data).cast("B")
        if len(view) != self.block_bytes:
            raise ValueError(f"payload of {len(view)} bytes, a block here is {self.block_bytes} "
                             "(same model, cache dtype and block size on both sides?)")
        if view.readonly:
            view = memoryview(bytearray(view))  # torch.frombuffer needs a writable buffer
        return torch.frombuffer(view, dtype=torch.uint8)
