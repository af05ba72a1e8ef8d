"""The KV store's state machine between tiers (``core.state``): room to make, eviction plans,
drops, moves and promotions, as rows of "given state, operation -> outcome and state after"."""

from __future__ import annotations

import pytest

from services.kvstore.core.capacity import ByteCapacity, SlotCapacity
from services.kvstore.core.policy import TierSpec
from tests.unit.kvstore_given import SLOT, SLOTS, Given, h


# --- room -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tier", "used_blocks", "size", "need"), [
    ("cxl", 0, 10, 0),
    ("cxl", SLOTS - 1, 10, 0),  # one slot left
    ("cxl", SLOTS, 10, 3 * SLOT),  # full: down to the low watermark (2 slots) after the new one
    ("nvme", 0, 10, 0),
    ("nvme", 9, 100, 0),  # 900 + 100 fits the capacity: no eviction on the way up
    ("nvme", 10, 50, 550),  # 1050 -> the low watermark, 500
    ("nvme", 4, 700, 700),  # at least the block itself (the watermark asks 600)
])
def test_room_to_make(tier: str, used_blocks: int, size: int, need: int) -> None:
    g = Given()
    for n in range(used_blocks):
        g.committed(100 + n, tier, size=SLOT)
    assert g.state.room_to_make(g.tier(tier), size) == need


@pytest.mark.parametrize(("tier", "used_blocks", "excess"), [
    ("cxl", 3, 0),  # at the high watermark (300 bytes), not past it
    ("cxl", 4, 2 * SLOT),  # 400 -> low, 200
    ("nvme", 9, 0),
    ("nvme", 10, 500),
])
def test_excess_past_the_high_watermark(tier: str, used_blocks: int, excess: int) -> None:
    g = Given()
    for n in range(used_blocks):
        g.committed(100 + n, tier, size=SLOT)
    assert g.state.excess(g.tier(tier)) == excess


@pytest.mark.parametrize(("capacity", "size", "fits", "room"), [
    (SlotCapacity("s", TierSpec("s", 2 * SLOT), SLOT, 2), SLOT, True, True),
    (SlotCapacity("s", TierSpec("s", 2 * SLOT), SLOT, 2), SLOT + 1, False, True),
    (SlotCapacity("s", TierSpec("s", SLOT - 1), SLOT, 2), 1, True, False),  # under one slot
    (ByteCapacity("b", TierSpec("b", 100)), 100, True, True),
    (ByteCapacity("b", TierSpec("b", 100)), 101, False, False),
    (ByteCapacity("b", TierSpec("b", 100)), 0, False, True),
])
def test_capacity(capacity: SlotCapacity | ByteCapacity, size: int, fits: bool,
                  room: bool) -> None:
    assert capacity.fits(size) is fits
    assert capacity.has_room(size, 0) is room


# --- eviction ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("tier", "need", "pinned", "victims", "dest"), [
    ("cxl", SLOT, [], [1], 1),  # least recently used first, one tier down
    ("cxl", 2 * SLOT, [1], [2, 3], 1),  # pinned blocks stay
    ("cxl", 0, [], [], 1),
    ("nvme", 10, [], [3], None),  # the last tier drops leaves first: no hole in a chain
    ("nvme", 30, [], [3, 2, 1], None),
    ("nvme", 30, [2], [3], None),  # 1 waits for its pinned child
])
def test_eviction_plan(tier: str, need: int, pinned: list[int], victims: list[int],
                       dest: int | None) -> None:
    g = Given()
    g.chain(3, tier)
    g.state.pin([h(n) for n in pinned], "L", 0, now=9.0)
    plan = g.state.eviction_plan(g.state.rank[tier], need)
    assert [b.block_hash for b in plan.victims] == [h(n) for n in victims]
    assert plan.dest == dest


@pytest.mark.parametrize(("change", "may_drop"), [
    ("none", True),
    ("pinned", False),
    ("moving", False),
    ("child committed", False),
    ("removed", False),
    ("child writing", True),  # only committed children hold their parent
])
def test_may_drop(change: str, may_drop: bool) -> None:
    g = Given()
    block = g.committed(1, "nvme")
    if change == "pinned":
        g.state.pin([h(1)], "L", 0, now=0.0)
    elif change == "moving":
        block.moving = True
    elif change == "child committed":
        g.committed(2, "nvme", parent=1)
    elif change == "child writing":
        g.writing(2, "nvme", parent=1)
    elif change == "removed":
        g.state.remove(block)
    assert g.state.may_drop(block) is may_drop


# --- moves ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dest", "cxl_used", "placed", "slot"), [
    ("cxl", 0, True, 0),
    ("cxl", SLOTS, False, -1),  # no slot left
    ("nvme", 0, True, -1),
])
def test_place_copy(dest: str, cxl_used: int, placed: bool, slot: int) -> None:
    g = Given()
    for n in range(cxl_used):
        g.committed(100 + n, "cxl")
    block = g.committed(1, "nvme" if dest == "cxl" else "cxl")
    copy = g.state.place_copy(block, g.tier(dest))
    assert (copy is not None) is placed
    if copy is not None:
        assert (copy.block_hash, copy.tier, copy.slot, copy.checksum) == (
            h(1), dest, slot, block.checksum)
        assert g.block(1) is block  # the copy is not the block until the move completes


@pytest.mark.parametrize(("change", "completes"), [
    ("none", True),
    ("pinned", False),  # a reader came meanwhile: the block stays where it is
    ("removed", False),
])
def test_move_completes_only_for_an_unpinned_present_block(change: str, completes: bool) -> None:
    g = Given()
    block = g.committed(1, "cxl", size=30)
    copy = g.state.place_copy(block, g.nvme)
    assert copy is not None
    if change == "pinned":
        g.state.pin([h(1)], "L", 0, now=0.0)
    elif change == "removed":
        g.state.remove(block)
    assert g.state.may_complete_move(block) is completes
    if not completes:
        return
    old = g.state.complete_move(block, copy, now=5.0)
    assert (old.tier, old.slot) == ("cxl", 0) and (block.tier, block.slot) == ("nvme", -1)
    assert g.state.index.used == {"cxl": 0, "nvme": 30}
    assert list(g.state.index.lru["nvme"]) == [h(1)] and block.last_access == 5.0
    assert g.used()["cxl"] == SLOT  # the old slot is freed by the caller, with its payload


# --- promotion --------------------------------------------------------------------------------
@pytest.mark.parametrize(("promote_on_hit", "tier", "promoting", "promoted"), [
    (True, "nvme", False, True),
    (True, "cxl", False, False),  # already in the fastest tier
    (True, "nvme", True, False),  # a promotion of it is under way
    (False, "nvme", False, False),
])
def test_promotions_after_release(promote_on_hit: bool, tier: str, promoting: bool,
                                  promoted: bool) -> None:
    g = Given(promote_on_hit=promote_on_hit)
    block = g.committed(1, tier)
    if promoting:
        g.state.promoting.add(h(1))
    assert g.state.promotions_after_release([h(1), h(9)]) == ([block] if promoted else [])
    assert (h(1) in g.state.promoting) is (promoted or promoting)
    g.state.promotion_finished(h(1))
    assert h(1) not in g.state.promoting


@pytest.mark.parametrize(("cxl_used", "change", "target"), [
    (0, "none", "cxl"),
    (2, "none", "cxl"),  # 200 + a slot stays at the high watermark (300)
    (3, "none", None),  # promotion never evicts
    (0, "pinned", None),
    (0, "moving", None),
])
def test_promotion_target(cxl_used: int, change: str, target: str | None) -> None:
    g = Given()
    for n in range(cxl_used):
        g.committed(100 + n, "cxl")
    block = g.committed(1, "nvme")
    if change == "pinned":
        g.state.pin([h(1)], "L", 0, now=0.0)
    elif change == "moving":
        block.moving = True
    found = g.state.promotion_target(block)
    assert (found.name if found is not None else None) == target


def test_tier_stats() -> None:
    g = Given()
    g.chain(2, "nvme", size=40)
    g.writing(3, "cxl")
    assert g.state.tier_stats() == [("cxl", SLOT, 0), ("nvme", 80, 2)]
