"""The global block index: which worker holds which KV blocks on device, and which blocks each
KV-store tier holds, fed by KV events.

Blocks are identified by chained hashes (``tandem.hashing``): a block's hash commits to its
whole prefix, so the radix tree over token blocks collapses to a map ``hash -> holders`` in
which every key is a tree node and the chain of a prompt is a root-to-node path. A prompt's
overlap with a source is the length of the leading run of its hashes that the source holds.

Holders are a bitmask over source slots (one slot per worker or store tier, reused after a
source is removed), so a lookup walks the prompt's hashes once and intersects masks: the cost
is per prompt block, independent of the number of workers.

Each distinct hash also has a dense block id, kept in the low ``ID_BITS`` of the same integer
as its holders (slot ``s`` is bit ``ID_BITS + s``), so an update still costs one dict read and
one write per block. Each source keeps a log of the ids it stored (4 bytes an entry), so
clearing or removing a source walks its own blocks, not the whole index. The log is not pruned
on ``removed`` (the holder bits stay the truth); it is compacted once it grows past twice the
source's blocks, which keeps it proportional at an amortized O(1) per event. No I/O.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable, Sequence

from tandem.kv_events import KVEvent

WORKER_PREFIX = "worker:"
STORE_PREFIX = "store:"
ID_BITS = 32
"""Low bits of a holders value that carry the block id (the logs are arrays of uint32)."""
ID_MASK = (1 << ID_BITS) - 1
LOG_SLACK = 1024
"""A source's log is compacted once it exceeds twice its blocks plus this (so small sources
are not compacted on every event)."""


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
        """Block hash -> holder bits (bit ``ID_BITS + slot``) | block id."""
        self._hash_of: list[bytes | None] = []
        """Block id -> hash (None: free id)."""
        self._free_ids: list[int] = []
        self._logs: list[array[int]] = []
        """Per slot: ids of the blocks the source stored since its last compaction (may repeat
        or name blocks it dropped since; the holder bits decide)."""
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
            self._logs[slot] = array("I")
        else:
            slot = len(self._source_of)
            self._source_of.append(source)
            self._name_of.append("")
            self._counts.append(0)
            self._logs.append(array("I"))
        self._slot_of[source] = slot
        bit = 1 << (ID_BITS + slot)
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
        bit = 1 << (ID_BITS + slot)
        holders = self._holders
        get = holders.get
        log = self._logs[slot]
        append = log.append
        before = len(log)
        for block_hash in hashes:
            value = get(block_hash)
            if value is None:
                block = self._new_id(block_hash)
                holders[block_hash] = bit | block
                append(block)
            elif not value & bit:
                holders[block_hash] = value | bit
                append(value & ID_MASK)
        count = self._counts[slot] + len(log) - before
        self._counts[slot] = count
        if len(log) > 2 * count + LOG_SLACK:
            self._compact(slot)

    def _new_id(self, block_hash: bytes) -> int:
        if self._free_ids:
            block = self._free_ids.pop()
            self._hash_of[block] = block_hash
        else:
            block = len(self._hash_of)
            self._hash_of.append(block_hash)
        return block

    def _unhold(self, block_hash: bytes, value: int, bit: int) -> None:
        """Takes ``bit`` off a block held under it; forgets the block when no holder is left."""
        rest = value ^ bit
        if rest > ID_MASK:
            self._holders[block_hash] = rest
        else:
            del self._holders[block_hash]
            self._hash_of[rest] = None
            self._free_ids.append(rest)

    def removed(self, source: str, hashes: Iterable[bytes]) -> None:
        slot = self._slot_of.get(source)
        if slot is None:
            return
        bit = 1 << (ID_BITS + slot)
        get = self._holders.get
        dropped = 0
        for block_hash in hashes:
            value = get(block_hash, 0)
            if value & bit:
                dropped += 1
                self._unhold(block_hash, value, bit)
        self._counts[slot] -= dropped

    def _compact(self, slot: int) -> None:
        """Rewrites a source's log to the blocks it holds now, each once."""
        bit = 1 << (ID_BITS + slot)
        holders = self._holders
        hash_of = self._hash_of
        held = dict.fromkeys(
            block for block in self._logs[slot]
            if (block_hash := hash_of[block]) is not None and holders[block_hash] & bit)
        self._logs[slot] = array("I", held)

    def cleared(self, source: str) -> None:
        """``source`` holds nothing any more. Walks that source's log: O(its blocks)."""
        slot = self._slot_of.get(source)
        if slot is None:
            return
        bit = 1 << (ID_BITS + slot)
        holders = self._holders
        hash_of = self._hash_of
        for block in self._logs[slot]:
            block_hash = hash_of[block]
            if block_hash is None:
                continue  # dropped already (a repeat in the log)
            value = holders[block_hash]
            if value & bit:
                self._unhold(block_hash, value, bit)
        self._logs[slot] = array("I")
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
        bit = 1 << (ID_BITS + slot)
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
                    device[names[lowest.bit_length() - 1 - ID_BITS]] = position
                    ended ^= lowest
            active = still
            if not active and not store_open:
                break
        else:
            if active > 0:
                length = len(hashes)
                while active:
                    lowest = active & -active
                    device[names[lowest.bit_length() - 1 - ID_BITS]] = length
                    active ^= lowest
        return Overlaps(device, tuple(store))
