"""The store's state machine (pure): every decision of the KV store, none of its I/O.

It holds the block index and sees the tiers through their accounting (``TierShape``). Each
operation checks and changes state in one synchronous step, with the time passed in; the I/O
side (``services.kvstore.store``) performs what a step decided (payload I/O, frees, the
write-through to Redis) and comes back for the next step after each await, since anything may
have changed meanwhile (a reader pinned a block, a reservation expired).

Transitions of a block: reserve -> ``writing`` -> commit -> ``committed`` (or abort / expiry ->
gone); a committed block is pinned and released by readers, moved down (demotion) or up
(promotion) between tiers, and dropped from the last tier or when found corrupt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from services.kvstore.core.capacity import TierShape
from services.kvstore.core.metadata import Block, Index, ReserveOutcome, State
from services.kvstore.core.policy import (
    ChildCounter,
    bytes_to_free,
    evictable,
    select_victims,
    should_promote,
)
from services.kvstore.settings import StoreSettings
from tandem.kvclient.checksums import checksum


@dataclasses.dataclass
class Reserved:
    """The answer to one block of a reserve."""

    outcome: str  # reserved | already_present | in_progress | no_space
    block: Block | None = None


@dataclasses.dataclass(frozen=True)
class Pinned:
    """The leading committed blocks of a chain, pinned under one lease."""

    lease_id: str
    blocks: list[Block]
    lease_ms: int
    misses: int
    """Blocks asked for and not pinned (the chain's tail from its first hole)."""


@dataclasses.dataclass(frozen=True)
class Eviction:
    """Victims to move out of one tier: down to ``dest``, or out of the store (``dest`` None:
    the last tier)."""

    victims: list[Block]
    dest: int | None


def verified(data: memoryview | None, block: Block) -> bool:
    """The payload read is the block's: its size and checksum match (else it is corrupt)."""
    return data is not None and len(data) == block.size and checksum(data) == block.checksum


def chains(blocks: Sequence[Block]) -> list[tuple[str, list[bytes], bytes]]:
    """Groups committed blocks into (tier, consecutive chain, parent of its first block)."""
    groups: list[tuple[str, list[bytes], bytes]] = []
    for block in blocks:
        if groups and groups[-1][0] == block.tier and groups[-1][1][-1] == block.parent:
            groups[-1][1].append(block.block_hash)
        else:
            groups.append((block.tier, [block.block_hash], block.parent))
    return groups


class StoreState:
    def __init__(self, tiers: Sequence[TierShape], settings: StoreSettings) -> None:
        self.tiers = list(tiers)
        self.settings = settings
        self.rank = {tier.name: i for i, tier in enumerate(self.tiers)}
        self.index = Index(self.rank)
        self.epoch = 0
        """Start counter of the store: the high half of every generation."""
        self._counter = 0
        self.promoting: set[bytes] = set()
        """Blocks with a promotion scheduled or running."""

    # --- accounting ---------------------------------------------------------------------------
    def next_generation(self) -> int:
        self._counter += 1
        return (self.epoch << 32) | self._counter

    def used(self, tier: TierShape) -> int:
        return tier.used_bytes(self.index.used[tier.name])

    def has_room(self, tier: TierShape, size: int) -> bool:
        return tier.has_room(size, self.index.used[tier.name])

    def tier_stats(self) -> list[tuple[str, int, int]]:
        """(tier, bytes used, committed blocks) per tier."""
        return [(t.name, self.used(t), len(self.index.lru[t.name])) for t in self.tiers]

    def start_rank(self, tier_name: str | None) -> int:
        """The first tier a reserve may place a block in (None: the fastest)."""
        return self.rank[tier_name] if tier_name else 0

    def room_to_make(self, tier: TierShape, size: int) -> int:
        """0 when a block of ``size`` fits the tier now; else the bytes to evict from it first:
        down to its low watermark, and at least the block's own footprint."""
        if self.has_room(tier, size):
            return 0
        footprint = tier.footprint(size)
        return max(bytes_to_free(tier.spec, self.used(tier), footprint), footprint)

    def excess(self, tier: TierShape) -> int:
        """Bytes to evict from a tier past its high watermark (down to its low one), else 0."""
        used = self.used(tier)
        return used - tier.spec.low_bytes if used > tier.spec.high_bytes else 0

    # --- put ----------------------------------------------------------------------------------
    def check_reserve(self, block_hash: bytes, now: float) -> tuple[ReserveOutcome, Block | None]:
        """Whether the block may be reserved; also an expired reservation of it, which this
        dropped (its space is the caller's to free)."""
        return self.index.check_reserve(block_hash, now)

    def reserve(self, block_hash: bytes, parent: bytes, tier: TierShape | None, size: int,
                now: float) -> tuple[Reserved, Block | None]:
        """Reserves the block in ``tier`` (where placement found room; None: nowhere), after
        checking again that nobody else reserved or committed it meanwhile. Returns the
        outcome and the expired reservation this dropped, if any."""
        outcome, expired = self.index.check_reserve(block_hash, now)
        if outcome is not ReserveOutcome.RESERVE:
            return Reserved(outcome.value), expired
        if tier is None or not self.has_room(tier, size):
            return Reserved("no_space"), expired
        block = Block(block_hash, parent, tier.name, State.WRITING, size, self.next_generation(),
                      deadline=now + self.settings.reserve_timeout_s)
        if not tier.claim_space(block):
            return Reserved("no_space"), expired
        self.index.add_writing(block)
        return Reserved("reserved", block), expired

    def adopt(self, block: Block) -> None:
        """A committed block that reconcile kept at start."""
        self.index.add_committed(block)

    def pending(self, block_hash: bytes, generation: int) -> Block | None:
        """The reservation that a commit of (hash, generation) refers to, or None (unknown,
        expired and reclaimed, already committed, another generation)."""
        block = self.index.get(block_hash)
        if block is None or block.state is not State.WRITING or block.generation != generation:
            return None
        return block

    def holds(self, block: Block) -> bool:
        """``block`` is still the store's record of its hash (not reclaimed, removed or
        replaced while the caller awaited)."""
        return self.index.get(block.block_hash) is block

    def commit(self, block: Block, now: float) -> None:
        result = self.index.commit(block.block_hash, block.generation, block.checksum, now)
        assert isinstance(result, Block), result

    def abort(self, block_hash: bytes, generation: int) -> Block | None:
        """Drops a reservation (its writer failed); returns it to free its space."""
        return self.index.abort(block_hash, generation)

    def expired_reservations(self, now: float) -> list[Block]:
        """Drops every reservation past its deadline; returns them to free their space."""
        return self.index.expired_writing(now)

    # --- get ----------------------------------------------------------------------------------
    def lookup(self, hashes: Sequence[bytes]) -> list[str]:
        """Tiers of the leading committed blocks of a chain."""
        return [block.tier for block in self.index.prefix(hashes)]

    def pin(self, hashes: Sequence[bytes], lease_id: str, lease_ms: int, now: float) -> Pinned:
        """Pins the leading committed blocks of a chain for ``lease_ms`` (0: the default lease)
        and marks them used now."""
        blocks = self.index.prefix(hashes)
        lease_ms = lease_ms or self.settings.lease_ms
        self.index.pin(lease_id, [b.block_hash for b in blocks], now + lease_ms / 1000)
        for block in blocks:
            self.index.touch(block.block_hash, now)
        return Pinned(lease_id, blocks, lease_ms, len(hashes) - len(blocks))

    def restore_lease(self, lease_id: str, hashes: Sequence[bytes], ttl_ms: int,
                      now: float) -> None:
        """Pins again what a lease recorded before a restart pinned, of what is still here."""
        present = [h for h in hashes if self.index.committed(h) is not None]
        self.index.pin(lease_id, present, now + ttl_ms / 1000)

    def release(self, lease_id: str) -> list[bytes] | None:
        """Unpins a lease's blocks; returns their hashes (None: no such lease)."""
        if lease_id not in self.index.leases:
            return None
        return self.index.release(lease_id)

    def reported_corrupt(self, block_hash: bytes, released: Sequence[bytes]) -> Block | None:
        """The committed block that a reader reported corrupt, if it was one the reader's
        lease held (the store checks it before dropping it)."""
        block = self.index.committed(block_hash)
        return block if block is not None and block_hash in released else None

    def expired_leases(self, now: float) -> list[str]:
        return self.index.expired_leases(now)

    # --- removal and moves --------------------------------------------------------------------
    def remove(self, block: Block, force: bool = False) -> bool:
        """Removes a committed block (dropped from the last tier; ``force``: corrupt, even when
        pinned). False: it was already gone."""
        if not self.holds(block):
            return False
        self.index.remove(block.block_hash, force=force)
        return True

    def eviction_plan(self, tier_index: int, need: int) -> Eviction:
        """Least recently used, unpinned blocks of a tier covering ``need`` bytes: moved one
        tier down, or (last tier) dropped leaves-first so that no chain gets a hole."""
        tier = self.tiers[tier_index]
        last = tier_index == len(self.tiers) - 1
        victims = select_victims(self.index.lru_order(tier.name), need, last,
                                 ChildCounter(self.index.children), tier.footprint)
        return Eviction(victims, None if last else tier_index + 1)

    def may_drop(self, block: Block) -> bool:
        """A victim of the last tier may still go: present, unpinned, not moving, and no
        block has it as parent."""
        return (self.holds(block) and evictable(block)
                and not self.index.has_children(block.block_hash))

    def place_copy(self, block: Block, dest: TierShape) -> Block | None:
        """The block's copy in another tier, with space claimed there (None: no space)."""
        copy = Block(block.block_hash, block.parent, dest.name, State.COMMITTED, block.size,
                     block.generation, checksum=block.checksum)
        return copy if dest.claim_space(copy) else None

    def may_complete_move(self, block: Block) -> bool:
        """A copy may replace the block: nobody pinned it and it is still here."""
        return not block.pins and self.holds(block)

    def complete_move(self, block: Block, copy: Block, now: float) -> Block:
        """The block now lives where ``copy`` is; returns its former self (to free)."""
        old = dataclasses.replace(block)
        self.index.move(block.block_hash, copy.tier, copy.slot, copy.path, now)
        return old

    def promotions_after_release(self, released: Sequence[bytes]) -> list[Block]:
        """Blocks read from a lower tier that go up a tier (``--promote-on-hit``); each is
        marked promoting until ``promotion_finished``."""
        if not self.settings.promote_on_hit:
            return []
        out: list[Block] = []
        for block_hash in released:
            block = self.index.committed(block_hash)
            if block is not None and self.rank[block.tier] > 0 and \
                    block_hash not in self.promoting:
                self.promoting.add(block_hash)
                out.append(block)
        return out

    def promotion_target(self, block: Block) -> TierShape | None:
        """The faster tier a block goes up to now, or None: pinned, moving, or no room there
        under its high watermark (promotion never evicts)."""
        rank = self.rank[block.tier]
        faster = self.tiers[rank - 1]
        if block.pins or block.moving or not should_promote(
                rank, faster.spec, self.used(faster), faster.footprint(block.size)):
            return None
        return faster

    def promotion_finished(self, block_hash: bytes) -> None:
        self.promoting.discard(block_hash)
