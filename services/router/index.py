"""The global block index: which worker holds which KV blocks on device, and which blocks each
KV-store tier holds, fed by KV events.

Blocks are identified by chained hashes (``tandem.hashing``): a block's hash commits to its
whole prefix, so the radix tree over token blocks collapses to a map ``hash -> holders`` in
which every key is a tree node and the chain of a prompt is a root-to-node path. A prompt's
overlap with a source is the length of the leading run of its hashes that the source holds.

Holders are a bitmask over source slots (one slot per worker or store tier, reused after a
source is removed), so a lookup walks the prompt's hashes once and intersects masks: the cost
is per prompt block, independent of the number of workers. No I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from tandem.kv_events import KVEvent

WORKER_PREFIX = "worker:"
STORE_PREFIX = "store:"


@dataclasses.dataclass(frozen=True)
class Overlaps:
    """How much of a prompt's chain each source already holds."""

    device: dict[str, int]
    """Worker id -> leading blocks on that worker's device (workers with none are absent)."""
    store: tuple[str, ...]
    """For each leading block held by the KV store, the tier that holds it (preferred tier
    first when several do); its length is the store overlap."""


class BlockIndex:
    """Per-source block sets keyed by chained block hash. Sources are ``worker:<id>`` and
    ``store:<tier>`` (the KV event stream names)."""

    def __init__(self, tier_preference: Sequence[str] = ("cxl", "nvme")) -> None:
        self.tier_preference = tuple(tier_preference)
        self._holders: dict[bytes, int] = {}
        self._slot_of: dict[str, int] = {}
        self._source_of: list[str | None] = []
        self._name_of: list[str] = []
        self._free_slots: list[int] = []
        self._counts: list[int] = []
        self._worker_mask = 0
        self._store_bits: list[tuple[int, str]] = []
        """(bit, tier) of each store source, preferred tiers first."""
        self._store_mask = 0

    # -- sources ------------------------------------------------------------------------------

    def _slot(self, source: str) -> int:
        slot = self._slot_of.get(source)
        if slot is not None:
            return slot
        if self._free_slots:
            slot = self._free_slots.pop()
            self._source_of[slot] = source
            self._counts[slot] = 0
        else:
            slot = len(self._source_of)
            self._source_of.append(source)
            self._name_of.append("")
            self._counts.append(0)
        self._slot_of[source] = slot
        bit = 1 << slot
        if source.startswith(STORE_PREFIX):
            tier = source[len(STORE_PREFIX):]
            self._name_of[slot] = tier
            self._store_mask |= bit
            self._store_bits.append((bit, tier))
            self._store_bits.sort(key=lambda item: self._tier_rank(item[1]))
        else:
            self._name_of[slot] = source.removeprefix(WORKER_PREFIX)
            self._worker_mask |= bit
        return slot

    def _tier_rank(self, tier: str) -> int:
        if tier in self.tier_preference:
            return self.tier_preference.index(tier)
        return len(self.tier_preference)

    @property
    def sources(self) -> list[str]:
        return list(self._slot_of)

    def blocks_of(self, source: str) -> int:
        """Blocks the index records for ``source``."""
        slot = self._slot_of.get(source)
        return 0 if slot is None else self._counts[slot]

    @property
    def unique_blocks(self) -> int:
        """Distinct block hashes held by at least one source."""
        return len(self._holders)

    @property
    def entries(self) -> int:
        """(source, block) pairs recorded."""
        return sum(self._counts[slot] for slot in self._slot_of.values())

    # -- updates ------------------------------------------------------------------------------

    def stored(self, source: str, hashes: Iterable[bytes]) -> None:
        slot = self._slot(source)
        bit = 1 << slot
        holders = self._holders
        added = 0
        for block_hash in hashes:
            mask = holders.get(block_hash, 0)
            if not mask & bit:
                holders[block_hash] = mask | bit
                added += 1
        self._counts[slot] += added

    def removed(self, source: str, hashes: Iterable[bytes]) -> None:
        slot = self._slot_of.get(source)
        if slot is None:
            return
        bit = 1 << slot
        holders = self._holders
        dropped = 0
        for block_hash in hashes:
            mask = holders.get(block_hash, 0)
            if mask & bit:
                dropped += 1
                if mask == bit:
                    del holders[block_hash]
                else:
                    holders[block_hash] = mask ^ bit
        self._counts[slot] -= dropped

    def cleared(self, source: str) -> None:
        """``source`` holds nothing any more. Scans the index: O(indexed blocks)."""
        slot = self._slot_of.get(source)
        if slot is None or self._counts[slot] == 0:
            return
        bit = 1 << slot
        holders = self._holders
        for block_hash, mask in list(holders.items()):
            if mask & bit:
                if mask == bit:
                    del holders[block_hash]
                else:
                    holders[block_hash] = mask ^ bit
        self._counts[slot] = 0

    def moved(self, source: str, hashes: Sequence[bytes], to_tier: str) -> None:
        """Store blocks left ``source``'s tier for ``to_tier``."""
        self.removed(source, hashes)
        self.stored(STORE_PREFIX + to_tier, hashes)

    def apply(self, source: str, event: KVEvent) -> None:
        """One KV event of ``source``'s stream."""
        if event.type == "stored":
            self.stored(source, event.hashes)
        elif event.type == "removed":
            self.removed(source, event.hashes)
        elif event.type == "cleared":
            self.cleared(source)
        elif event.type == "moved":
            self.moved(source, event.hashes, event.tier)

    def replace(self, source: str, hashes: Iterable[bytes]) -> None:
        """Resync: ``source`` holds exactly ``hashes`` (a full snapshot)."""
        self.cleared(source)
        self.stored(source, hashes)

    def remove_source(self, source: str) -> None:
        """Forgets ``source`` entirely (a worker whose lease lapsed) and frees its slot."""
        slot = self._slot_of.get(source)
        if slot is None:
            return
        self.cleared(source)
        bit = 1 << slot
        self._worker_mask &= ~bit
        self._store_mask &= ~bit
        self._store_bits = [(b, tier) for b, tier in self._store_bits if b != bit]
        del self._slot_of[source]
        self._source_of[slot] = None
        self._free_slots.append(slot)

    # -- queries ------------------------------------------------------------------------------

    def overlaps(self, hashes: Sequence[bytes]) -> Overlaps:
        """Leading blocks of ``hashes`` held by each worker and by the store."""
        holders = self._holders
        names = self._name_of
        store_mask = self._store_mask
        store_bits = self._store_bits
        device: dict[str, int] = {}
        store: list[str] = []
        store_open = store_mask != 0
        active = -1  # every worker, until the first block narrows it
        for position, block_hash in enumerate(hashes):
            mask = holders.get(block_hash, 0)
            if store_open:
                in_store = mask & store_mask
                if in_store:
                    store.append(next(tier for bit, tier in store_bits if in_store & bit))
                else:
                    store_open = False
            still = mask & self._worker_mask if active == -1 else active & mask
            if active != -1 and still != active:
                ended = active ^ still
                while ended:
                    lowest = ended & -ended
                    device[names[lowest.bit_length() - 1]] = position
                    ended ^= lowest
            active = still
            if not active and not store_open:
                break
        else:
            if active > 0:
                length = len(hashes)
                while active:
                    lowest = active & -active
                    device[names[lowest.bit_length() - 1]] = length
                    active ^= lowest
        return Overlaps(device, tuple(store))
