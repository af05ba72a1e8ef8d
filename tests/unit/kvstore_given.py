"""A given state of the KV store's state machine, for the table tests of ``core.state``: two
tiers (``cxl``: 4 slots of 100 bytes, ``nvme``: 1000 bytes), blocks put in them by the state
machine's own operations, and the clock passed by hand. Also: a reservation in a real tier."""

from __future__ import annotations

from services.kvstore.core.capacity import ByteCapacity, SlotCapacity
from services.kvstore.core.metadata import Block, State
from services.kvstore.core.policy import TierSpec
from services.kvstore.core.state import StoreState
from services.kvstore.settings import StoreSettings
from services.kvstore.tiers.base import Tier

SLOT = 100
SLOTS = 4
FILE_BYTES = 1000
RESERVE_TIMEOUT_S = 10.0
LEASE_MS = 1000


def h(n: int) -> bytes:
    return n.to_bytes(16, "big")


class Given:
    """``cxl`` (watermarks 0.75 / 0.5: high 300 bytes, low 200) over ``nvme`` (0.9 / 0.5: high
    900, low 500)."""

    def __init__(self, promote_on_hit: bool = True) -> None:
        self.cxl = SlotCapacity("cxl", TierSpec("cxl", SLOTS * SLOT, 0.75, 0.5), SLOT, SLOTS)
        self.nvme = ByteCapacity("nvme", TierSpec("nvme", FILE_BYTES, 0.9, 0.5))
        self.state = StoreState([self.cxl, self.nvme], StoreSettings(
            reserve_timeout_s=RESERVE_TIMEOUT_S, lease_ms=LEASE_MS,
            promote_on_hit=promote_on_hit))

    def tier(self, name: str) -> SlotCapacity | ByteCapacity:
        return self.cxl if name == "cxl" else self.nvme

    def writing(self, n: int, tier: str = "cxl", parent: int | None = None, size: int = 10,
                now: float = 0.0) -> Block:
        """Block ``n`` reserved at ``now`` (its deadline: ``now`` + 10 s)."""
        reserved, _ = self.state.reserve(h(n), h(parent) if parent is not None else b"",
                                         self.tier(tier), size, now)
        assert reserved.block is not None, reserved
        return reserved.block

    def committed(self, n: int, tier: str = "cxl", parent: int | None = None, size: int = 10,
                  now: float = 0.0) -> Block:
        """Block ``n`` reserved and committed at ``now`` (checksum ``n``)."""
        block = self.writing(n, tier, parent, size, now)
        block.checksum = n
        self.state.commit(block, now)
        return block

    def chain(self, count: int, tier: str = "cxl", size: int = 10) -> list[Block]:
        """Blocks 1..count, each the parent of the next, committed (and used) in order."""
        return [self.committed(n, tier, n - 1 if n > 1 else None, size, now=float(n))
                for n in range(1, count + 1)]

    def block(self, n: int) -> Block | None:
        return self.state.index.get(h(n))

    def states(self) -> dict[int, tuple[str, str]]:
        """Every block: number -> (state, tier)."""
        return {int.from_bytes(b.block_hash, "big"): (
            "writing" if b.state is State.WRITING else "committed", b.tier)
            for b in self.state.index.blocks.values()}

    def used(self) -> dict[str, int]:
        return {t.name: self.state.used(t) for t in self.state.tiers}


def reserve(tier: Tier, block: Block) -> bool:
    """What the store does for a reservation: claims the space, then prepares it."""
    if not tier.claim_space(block):
        return False
    tier.prepare(block)
    return True
