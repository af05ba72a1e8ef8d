"""Paged KV blocks with a prefix cache by chained block hash and LRU eviction (as vLLM's)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from tandem.engines.base import KVEventSink


def _ignore_events(event_type: str, hashes: list[bytes], parent: bytes) -> None:
    return None


class BlockPool:
    """``num_blocks`` device blocks. A block is in use (ref count > 0), cached and evictable
    (ref count 0, content kept, findable by hash until evicted in LRU order) or empty."""

    def __init__(self, num_blocks: int, sink: KVEventSink | None = None) -> None:
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self.sink: KVEventSink = sink or _ignore_events
        self._ref_count = [0] * num_blocks
        self._hash_of: list[bytes | None] = [None] * num_blocks
        self._by_hash: dict[bytes, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._empty: list[int] = list(range(num_blocks - 1, -1, -1))
        self.used_blocks = 0
        self._pending_removed: list[bytes] = []

    @property
    def free_blocks(self) -> int:
        """Blocks that an allocation can take now (empty or evictable)."""
        return len(self._empty) + len(self._evictable)

    def cached_prefix(self, hashes: list[bytes]) -> int:
        """How many leading ``hashes`` are cached (in use or evictable)."""
        count = 0
        for block_hash in hashes:
            if block_hash not in self._by_hash:
                break
            count += 1
        return count

    def acquire_cached(self, hashes: list[bytes]) -> list[int]:
        """Takes a reference on the cached blocks of ``hashes`` (all must be cached)."""
        blocks = []
        for block_hash in hashes:
            block = self._by_hash[block_hash]
            if self._ref_count[block] == 0:
                del self._evictable[block]
                self.used_blocks += 1
            self._ref_count[block] += 1
            blocks.append(block)
        return blocks

    def allocate(self) -> int | None:
        """An empty block (evicting the least recently freed cached one if needed), or None."""
        if self._empty:
            block = self._empty.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            evicted = self._hash_of[block]
            if evicted is not None:
                del self._by_hash[evicted]
                self._hash_of[block] = None
                self._pending_removed.append(evicted)
        else:
            return None
        self._ref_count[block] = 1
        self.used_blocks += 1
        return block

    def commit(self, blocks: list[int], hashes: list[bytes], parent: bytes) -> None:
        """Records that ``blocks`` now hold the full blocks ``hashes`` (a chain continuing
        ``parent``) and announces them as one "stored" event. A hash that another block already
        holds leaves its duplicate block unnamed (freed as empty)."""
        self.flush()
        stored: list[bytes] = []
        for block, block_hash in zip(blocks, hashes, strict=True):
            if block_hash in self._by_hash:
                continue
            self._hash_of[block] = block_hash
            self._by_hash[block_hash] = block
            stored.append(block_hash)
        if stored:
            self.sink("stored", stored, parent if stored[0] == hashes[0] else b"")

    def flush(self) -> None:
        """Announces the evictions not yet announced, as one "removed" event."""
        if self._pending_removed:
            removed, self._pending_removed = self._pending_removed, []
            self.sink("removed", removed, b"")

    def release(self, blocks: list[int]) -> None:
        """Drops one reference on each block; blocks freed last are evicted last."""
        for block in reversed(blocks):
            self._ref_count[block] -= 1
            if self._ref_count[block] > 0:
                continue
            self.used_blocks -= 1
            if self._hash_of[block] is None:
                self._empty.append(block)
            else:
                self._evictable[block] = None
        # Blocks still in use keep their hashes: announce them again.
        remaining = list(self.cached_hashes())
        if remaining:
            self.sink("stored", remaining, b"")

    def cached_hashes(self) -> Iterator[bytes]:
        """Every cached block hash, parents before children (insertion order)."""
        yield from self._by_hash
