"""The metadata state machine of KV blocks (pure: no I/O, no clock of its own).

A block is ``writing`` from a successful reserve until commit (then ``committed``) or until it
is aborted / its reservation expires (then it is gone and its space is reclaimed). Only
committed blocks are visible: to Lookup, to Get, to eviction. Committed blocks carry pins
(leases of readers); a pinned block is never evicted, moved or overwritten.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Iterable, Iterator


class State(enum.Enum):
    WRITING = "writing"
    COMMITTED = "committed"


class ReserveOutcome(enum.Enum):
    RESERVE = "reserve"  # the caller may allocate space and call add_writing
    ALREADY_PRESENT = "already_present"
    IN_PROGRESS = "in_progress"


class CommitError(enum.Enum):
    UNKNOWN = "unknown reservation"
    GENERATION = "generation mismatch"
    ALREADY_COMMITTED = "already committed"


@dataclasses.dataclass
class Block:
    """Everything the store knows about one block."""

    block_hash: bytes
    parent: bytes
    tier: str
    state: State
    size: int
    generation: int
    slot: int = -1  # arena slot, or -1
    path: str = ""  # block file (final path once committed, temporary while writing)
    checksum: int = 0
    deadline: float = 0.0  # writing: when the reservation expires
    last_access: float = 0.0
    pins: int = 0
    moving: bool = False  # being demoted/promoted: not evictable, still readable


@dataclasses.dataclass
class Lease:
    hashes: list[bytes]
    expires: float


class Index:
    """Blocks by hash, the per-tier LRU, children counts (for prefix-aware eviction), leases."""

    def __init__(self, tiers: Iterable[str]) -> None:
        self.blocks: dict[bytes, Block] = {}
        self.writing: dict[bytes, Block] = {}
        """The reservations among ``blocks``: the reclaim check walks these, not every block."""
        self.lru: dict[str, OrderedDict[bytes, None]] = {tier: OrderedDict() for tier in tiers}
        self.children: dict[bytes, int] = {}
        self.leases: dict[str, Lease] = {}
        self.used: dict[str, int] = dict.fromkeys(self.lru, 0)

    # --- queries ------------------------------------------------------------------------------
    def get(self, block_hash: bytes) -> Block | None:
        return self.blocks.get(block_hash)

    def committed(self, block_hash: bytes) -> Block | None:
        block = self.blocks.get(block_hash)
        return block if block is not None and block.state is State.COMMITTED else None

    def has_children(self, block_hash: bytes) -> bool:
        return self.children.get(block_hash, 0) > 0

    def prefix(self, hashes: Iterable[bytes]) -> list[Block]:
        """The committed leading blocks of a chain."""
        out: list[Block] = []
        for block_hash in hashes:
            block = self.committed(block_hash)
            if block is None:
                break
            out.append(block)
        return out

    def lru_order(self, tier: str) -> Iterator[Block]:
        """Committed blocks of a tier, least recently used first."""
        for block_hash in self.lru[tier]:
            yield self.blocks[block_hash]

    def count(self, tier: str) -> int:
        return sum(1 for block in self.blocks.values() if block.tier == tier)

    def pinned_count(self) -> int:
        return sum(1 for block in self.blocks.values() if block.pins > 0)

    # --- writes -------------------------------------------------------------------------------
    def check_reserve(self, block_hash: bytes, now: float) -> tuple[ReserveOutcome, Block | None]:
        """Whether a new reservation may be made; returns an expired reservation to reclaim."""
        block = self.blocks.get(block_hash)
        if block is None:
            return ReserveOutcome.RESERVE, None
        if block.state is State.COMMITTED:
            return ReserveOutcome.ALREADY_PRESENT, None
        if block.deadline <= now:
            self._drop(block)
            return ReserveOutcome.RESERVE, block
        return ReserveOutcome.IN_PROGRESS, None

    def add_writing(self, block: Block) -> None:
        if block.block_hash in self.blocks:
            raise ValueError("block already known")
        block.state = State.WRITING
        self.blocks[block.block_hash] = block
        self.writing[block.block_hash] = block
        self.used[block.tier] += block.size

    def commit(self, block_hash: bytes, generation: int, checksum: int,
               now: float) -> Block | CommitError:
        block = self.blocks.get(block_hash)
        if block is None:
            return CommitError.UNKNOWN
        if block.generation != generation:
            return CommitError.GENERATION
        if block.state is State.COMMITTED:
            return CommitError.ALREADY_COMMITTED
        block.state = State.COMMITTED
        del self.writing[block_hash]
        block.checksum = checksum
        block.last_access = now
        self.lru[block.tier][block_hash] = None
        if block.parent:
            self.children[block.parent] = self.children.get(block.parent, 0) + 1
        return block

    def add_committed(self, block: Block) -> None:
        """Adds a block known to be committed (reconcile at start)."""
        block.state = State.WRITING
        self.add_writing(block)
        result = self.commit(block.block_hash, block.generation, block.checksum, block.last_access)
        assert isinstance(result, Block)

    def abort(self, block_hash: bytes, generation: int) -> Block | None:
        """Drops a reservation (writer failed); returns it so its space can be freed."""
        block = self.blocks.get(block_hash)
        if block is None or block.state is not State.WRITING or block.generation != generation:
            return None
        self._drop(block)
        return block

    def expired_writing(self, now: float) -> list[Block]:
        """Drops every reservation past its deadline; returns them to free their space."""
        expired = [b for b in self.writing.values() if b.deadline <= now]
        for block in expired:
            self._drop(block)
        return expired

    def remove(self, block_hash: bytes, force: bool = False) -> Block:
        """Removes a committed block (eviction from the last tier; ``force``: corruption, where
        readers holding pins detect it by their own checksum check)."""
        block = self.blocks[block_hash]
        if block.pins and not force:
            raise ValueError("cannot remove a pinned block")
        self._drop(block)
        return block

    def move(self, block_hash: bytes, tier: str, slot: int, path: str, now: float) -> Block:
        """Records that a committed block now lives in another tier."""
        block = self.blocks[block_hash]
        if block.state is not State.COMMITTED:
            raise ValueError("only committed blocks move")
        self.lru[block.tier].pop(block_hash, None)
        self.used[block.tier] -= block.size
        block.tier, block.slot, block.path = tier, slot, path
        self.used[tier] += block.size
        self.lru[tier][block_hash] = None
        block.last_access = max(block.last_access, now)
        return block

    def touch(self, block_hash: bytes, now: float) -> None:
        block = self.blocks.get(block_hash)
        if block is not None and block.state is State.COMMITTED:
            block.last_access = now
            self.lru[block.tier].move_to_end(block_hash)

    def _drop(self, block: Block) -> None:
        del self.blocks[block.block_hash]
        self.writing.pop(block.block_hash, None)
        self.used[block.tier] -= block.size
        if block.state is State.COMMITTED:
            self.lru[block.tier].pop(block.block_hash, None)
            if block.parent:
                left = self.children.get(block.parent, 0) - 1
                if left > 0:
                    self.children[block.parent] = left
                else:
                    self.children.pop(block.parent, None)

    # --- pins ---------------------------------------------------------------------------------
    def pin(self, lease_id: str, hashes: list[bytes], expires: float) -> None:
        for block_hash in hashes:
            self.blocks[block_hash].pins += 1
        self.leases[lease_id] = Lease(list(hashes), expires)

    def release(self, lease_id: str) -> list[bytes]:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        for block_hash in lease.hashes:
            block = self.blocks.get(block_hash)
            if block is not None and block.pins > 0:
                block.pins -= 1
        return lease.hashes

    def expired_leases(self, now: float) -> list[str]:
        return [lease_id for lease_id, lease in self.leases.items() if lease.expires <= now]
