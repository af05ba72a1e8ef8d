"""One store block = one engine block of every layer, laid end to end.

vLLM's CPU attention keeps each layer's paged cache as ``[num_blocks, kv_heads, block_size,
2 * head_size]`` (block-major), so a block of one layer is one contiguous slice and a store
block is the concatenation of that slice over the layers, in a fixed layer order. Both sides of
a transfer must run the same model with the same block size; the payload size checks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class BlockLayout:
    """Copies whole blocks between the engine's per-layer caches and flat byte payloads."""

    def __init__(self, kv_caches: Mapping[str, torch.Tensor]) -> None:
        if not kv_caches:
            raise ValueError("no KV cache layers to transfer")
        self.layer_names = sorted(kv_caches)
        self.layers = [kv_caches[name] for name in self.layer_names]
        num_blocks = {int(layer.shape[0]) for layer in self.layers}
        if len(num_blocks) != 1:
            raise ValueError(f"layers disagree on the number of blocks: {sorted(num_blocks)}")
        for name, layer in zip(self.layer_names, self.layers, strict=True):
            if not layer.is_contiguous():
                raise ValueError(f"KV cache of {name} is not contiguous (unsupported layout)")
        self.num_blocks = num_blocks.pop()
        self.layer_bytes = [layer[0].numel() * layer.element_size() for layer in self.layers]
        self.block_bytes = sum(self.layer_bytes)
        # Byte views of each layer: a block of a layer is one row.
        self._rows = [layer.view(torch.uint8).reshape(self.num_blocks, -1)
                      for layer in self.layers]

    def gather(self, block_id: int, out: memoryview | bytearray) -> None:
        """Copies engine block ``block_id`` (all layers) into ``out`` (``block_bytes`` long)."""
        target = self._payload(out)
        offset = 0
        for rows, size in zip(self._rows, self.layer_bytes, strict=True):
            target[offset:offset + size].copy_(rows[block_id])
            offset += size

    def scatter(self, block_id: int, payload: memoryview | bytes | bytearray) -> None:
        """Copies a store payload into engine block ``block_id`` (all layers)."""
        source = self._payload(payload)
        offset = 0
        for rows, size in zip(self._rows, self.layer_bytes, strict=True):
            rows[block_id].copy_(source[offset:offset + size])
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
                             "(same model and block size on both sides?)")
        if view.readonly:
            view = memoryview(bytearray(view))  # torch.frombuffer needs a writable buffer
        return torch.frombuffer(view, dtype=torch.uint8)
