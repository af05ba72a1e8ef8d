"""How much room a tier has (pure): the accounting half of a tier, without its payload I/O.

A tier of fixed-size slots (the arena) counts whole slots, whatever the block size; a tier of
block files counts payload bytes. The store's state machine sees a tier only through
``TierShape``; the I/O tiers (``services.kvstore.tiers``) extend these classes.
"""

from __future__ import annotations

from typing import Protocol

from services.kvstore.core.metadata import Block
from services.kvstore.core.policy import TierSpec


class TierShape(Protocol):
    """What the state machine needs to know of a tier: its name, limits and accounting."""

    name: str
    spec: TierSpec

    @property
    def slot_bytes(self) -> int:
        """Size of one slot (0: the tier has no slots)."""
        ...

    def footprint(self, size: int) -> int:
        """Bytes of the tier that a block of ``size`` payload bytes takes."""
        ...

    def used_bytes(self, index_used: int) -> int:
        """Bytes in use, given the payload bytes that the index accounts to the tier."""
        ...

    def fits(self, size: int) -> bool:
        """A block of this size can ever live in this tier."""
        ...

    def has_room(self, size: int, index_used: int) -> bool:
        """A block of this size fits now, without evicting anything."""
        ...

    def claim_space(self, block: Block) -> bool:
        """Takes the space for ``block`` (its slot); False: none is left. The tier gives it
        back when it frees the block."""
        ...


class SlotAllocator:
    """Free slots of the arena (pure). Lowest slot first, so a small working set stays compact."""

    def __init__(self, n_slots: int) -> None:
        if n_slots <= 0:
            raise ValueError("the arena needs at least one slot")
        self.n_slots = n_slots
        self._free = list(range(n_slots - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    def allocate(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def claim(self, slot: int) -> None:
        """Marks a specific slot used (reconcile at start)."""
        if slot in self._used or not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} cannot be claimed")
        self._free.remove(slot)
        self._used.add(slot)

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        self._free.append(slot)
        if len(self._free) > 1 and self._free[-1] > self._free[-2]:
            self._free.sort(reverse=True)


class SlotCapacity:
    """Accounting of a tier of fixed-size slots: every block takes one whole slot."""

    def __init__(self, name: str, spec: TierSpec, slot_bytes: int, n_slots: int) -> None:
        self.name, self.spec = name, spec
        self._slot_bytes = slot_bytes
        self.allocator = SlotAllocator(n_slots)

    @property
    def slot_bytes(self) -> int:
        return self._slot_bytes

    def footprint(self, size: int) -> int:
        return self._slot_bytes

    def used_bytes(self, index_used: int) -> int:
        return self.allocator.used_count * self._slot_bytes

    def fits(self, size: int) -> bool:
        return 0 < size <= self._slot_bytes

    def has_room(self, size: int, index_used: int) -> bool:
        return (self.allocator.free_count > 0
                and self.used_bytes(0) + self._slot_bytes <= self.spec.capacity_bytes)

    def claim_space(self, block: Block) -> bool:
        slot = self.allocator.allocate()
        if slot is None:
            return False
        block.slot, block.path = slot, ""
        return True

    def release_space(self, block: Block) -> None:
        if block.slot >= 0:
            self.allocator.release(block.slot)
            block.slot = -1


class ByteCapacity:
    """Accounting of a tier of variable-size blocks (files): payload bytes against capacity."""

    def __init__(self, name: str, spec: TierSpec) -> None:
        self.name, self.spec = name, spec

    @property
    def slot_bytes(self) -> int:
        return 0

    def footprint(self, size: int) -> int:
        return size

    def used_bytes(self, index_used: int) -> int:
        return index_used

    def fits(self, size: int) -> bool:
        return 0 < size <= self.spec.capacity_bytes

    def has_room(self, size: int, index_used: int) -> bool:
        return index_used + size <= self.spec.capacity_bytes

    def claim_space(self, block: Block) -> bool:
        """Always room to claim: the index accounts the bytes."""
        block.slot = -1
        return True
