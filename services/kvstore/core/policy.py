"""Tier policy (pure): watermarks, prefix-aware LRU victim selection, promotion decisions.

Demotion moves least recently used, unpinned blocks one tier down; the last tier drops them.
Dropping is prefix-aware: a block is dropped only when no block of the store has it as a parent,
so a chain always stays a contiguous prefix (a Lookup never sees a hole). Dropping a leaf can
make its parent a leaf; selection continues within the same pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from services.kvstore.core.metadata import Block, State


@dataclasses.dataclass(frozen=True)
class TierSpec:
    """Capacity and watermarks of one tier."""

    name: str
    capacity_bytes: int
    high_watermark: float = 0.9
    low_watermark: float = 0.75

    def __post_init__(self) -> None:
        if self.capacity_bytes <= 0:
            raise ValueError(f"tier {self.name}: capacity must be positive")
        if not 0 < self.low_watermark <= self.high_watermark <= 1:
            raise ValueError(f"tier {self.name}: need 0 < low <= high <= 1 watermarks")

    @property
    def high_bytes(self) -> int:
        return math.floor(self.capacity_bytes * self.high_watermark)

    @property
    def low_bytes(self) -> int:
        return math.floor(self.capacity_bytes * self.low_watermark)


def bytes_to_free(spec: TierSpec, used: int, incoming: int) -> int:
    """Bytes to evict so that ``incoming`` more bytes fit.

    Nothing while the tier stays at or under its high watermark; past it, down to the low
    watermark (hysteresis, so eviction runs in batches rather than on every put). Never less
    than what the incoming bytes need to fit the capacity itself.
    """
    after = used + incoming
    if after <= spec.high_bytes:
        return 0
    target = max(spec.low_bytes, 0)
    return max(after - target, after - spec.capacity_bytes, 0)


def evictable(block: Block) -> bool:
    return block.state is State.COMMITTED and block.pins == 0 and not block.moving


def select_victims(
    lru_order: Iterable[Block],
    need_bytes: int,
    drop: bool,
    has_children: Callable[[bytes], bool],
    footprint: Callable[[int], int] = lambda size: size,
) -> list[Block]:
    """Blocks to evict, least recently used first, until ``need_bytes`` are covered.

    ``drop``: the blocks leave the store (last tier), so only blocks without present children
    qualify; removing one may make its parent eligible. Otherwise they move down a tier, which
    leaves no hole, so any unpinned committed block qualifies.
    """
    if need_bytes <= 0:
        return []
    candidates = [block for block in lru_order if evictable(block)]
    chosen: list[Block] = []
    freed = 0
    if not drop:
        for block in candidates:
            if freed >= need_bytes:
                break
            chosen.append(block)
            freed += footprint(block.size)
        return chosen
    removed_children: dict[bytes, int] = {}
    chosen_hashes: set[bytes] = set()

    def is_leaf(block: Block) -> bool:
        if not has_children(block.block_hash):
            return True
        return removed_children.get(block.block_hash, 0) > 0 and _all_children_removed(
            block.block_hash, removed_children, has_children)

    progress = True
    while freed < need_bytes and progress:
        progress = False
        for block in candidates:
            if freed >= need_bytes:
                break
            if block.block_hash in chosen_hashes or not is_leaf(block):
                continue
            chosen.append(block)
            chosen_hashes.add(block.block_hash)
            freed += footprint(block.size)
            if block.parent:
                removed_children[block.parent] = removed_children.get(block.parent, 0) + 1
            progress = True
    return chosen


def _all_children_removed(
    parent: bytes, removed_children: dict[bytes, int], has_children: Callable[[bytes], bool]
) -> bool:
    count_of = getattr(has_children, "count", None)
    if count_of is None:
        return False
    return bool(removed_children.get(parent, 0) >= count_of(parent))


@dataclasses.dataclass(frozen=True)
class ChildCounter:
    """``has_children`` for select_victims backed by a children-count map."""

    children: dict[bytes, int]

    def __call__(self, block_hash: bytes) -> bool:
        return self.children.get(block_hash, 0) > 0

    def count(self, block_hash: bytes) -> int:
        return self.children.get(block_hash, 0)


def should_promote(tier_index: int, faster: TierSpec | None, faster_used: int,
                   size: int) -> bool:
    """Promote a hit from a lower tier when the faster tier has room under its high watermark
    (promotion never causes eviction)."""
    return tier_index > 0 and faster is not None and faster_used + size <= faster.high_bytes
