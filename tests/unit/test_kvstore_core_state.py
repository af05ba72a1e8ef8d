"""The KV store's state machine (``core.state``): reserve, commit, abort, expiry, pins, leases
and corruption, as rows of "given state, operation -> outcome and state after". No Redis, no
process, no clock: ``now`` is passed in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.kvstore.core.metadata import Block, ReserveOutcome, State
from services.kvstore.core.state import chains, verified
from tandem.kvclient.checksums import checksum
from tests.unit.kvstore_given import LEASE_MS, SLOT, SLOTS, Given, h

Setup = Callable[[Given], object]

GIVEN: dict[str, Setup] = {
    "empty": lambda g: None,
    "1 writing until 10": lambda g: g.writing(1, now=0.0),
    "1 committed": lambda g: g.committed(1),
    "cxl full": lambda g: [g.committed(n) for n in range(10, 10 + SLOTS)],
    "nvme full": lambda g: [g.committed(n, "nvme", size=100) for n in range(10, 20)],
    "1 writing, cxl full": lambda g: [g.writing(1), *[g.committed(n) for n in range(10, 13)]],
}


# --- reserve ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "now", "expected"), [
    ("empty", 0.0, ReserveOutcome.RESERVE),
    ("1 writing until 10", 9.9, ReserveOutcome.IN_PROGRESS),
    ("1 writing until 10", 10.0, ReserveOutcome.RESERVE),
    ("1 committed", 99.0, ReserveOutcome.ALREADY_PRESENT),
])
def test_check_reserve(given: str, now: float, expected: ReserveOutcome) -> None:
    g = Given()
    GIVEN[given](g)
    outcome, expired = g.state.check_reserve(h(1), now)
    assert outcome is expected
    assert (expired is not None) is (given == "1 writing until 10" and now >= 10.0)
    if expired is not None:  # dropped from the index; its slot is the caller's to free
        assert g.block(1) is None and g.state.index.used["cxl"] == 0
        assert g.used()["cxl"] == SLOT
        g.cxl.release_space(expired)
        assert g.used()["cxl"] == 0


@pytest.mark.parametrize(("given", "tier", "now", "outcome", "replaced", "after"), [
    ("empty", "cxl", 0.0, "reserved", False, {1: ("writing", "cxl")}),
    ("empty", "nvme", 0.0, "reserved", False, {1: ("writing", "nvme")}),
    ("empty", None, 0.0, "no_space", False, {}),
    ("1 writing until 10", "cxl", 5.0, "in_progress", False, {1: ("writing", "cxl")}),
    ("1 writing until 10", "cxl", 10.0, "reserved", True, {1: ("writing", "cxl")}),
    ("1 committed", "nvme", 5.0, "already_present", False, {1: ("committed", "cxl")}),
    ("cxl full", "cxl", 0.0, "no_space", False,
     {n: ("committed", "cxl") for n in range(10, 10 + SLOTS)}),
    ("nvme full", "nvme", 0.0, "no_space", False,
     {n: ("committed", "nvme") for n in range(10, 20)}),
])
def test_reserve(given: str, tier: str | None, now: float, outcome: str, replaced: bool,
                 after: dict[int, tuple[str, str]]) -> None:
    g = Given()
    GIVEN[given](g)
    before = g.block(1)
    reserved, expired = g.state.reserve(h(1), h(0), g.tier(tier) if tier else None, 10, now)
    assert reserved.outcome == outcome
    assert (reserved.block is not None) is (outcome == "reserved")
    assert (expired is before is not None) is replaced
    assert g.states() == after
    if reserved.block is not None:
        assert reserved.block.deadline == now + 10.0 and reserved.block.parent == h(0)
        assert g.block(1) is reserved.block


@pytest.mark.parametrize(("tier", "slot", "used"), [
    ("cxl", 0, {"cxl": SLOT, "nvme": 0}),  # a slot whatever the size
    ("nvme", -1, {"cxl": 0, "nvme": 10}),
])
def test_reserve_claims_space(tier: str, slot: int, used: dict[str, int]) -> None:
    g = Given()
    block = g.writing(1, tier, size=10)
    assert block.slot == slot and g.used() == used


def test_generations_carry_the_epoch_and_count_up() -> None:
    g = Given()
    g.state.epoch = 3
    assert [g.writing(n).generation for n in (1, 2)] == [(3 << 32) | 1, (3 << 32) | 2]


@pytest.mark.parametrize(("tier_name", "expected"), [(None, 0), ("cxl", 0), ("nvme", 1)])
def test_start_rank(tier_name: str | None, expected: int) -> None:
    assert Given().state.start_rank(tier_name) == expected


# --- commit and abort -------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "hash_n", "generation", "found"), [
    ("1 writing until 10", 1, 1, True),
    ("1 writing until 10", 1, 2, False),  # another reservation's commit
    ("1 writing until 10", 9, 1, False),  # unknown
    ("1 committed", 1, 1, False),  # already committed
    ("empty", 1, 1, False),  # reclaimed meanwhile
])
def test_pending(given: str, hash_n: int, generation: int, found: bool) -> None:
    g = Given()
    GIVEN[given](g)
    assert (g.state.pending(h(hash_n), generation) is not None) is found


def test_commit_makes_the_block_visible_in_its_chain() -> None:
    g = Given()
    parent = g.committed(1, now=1.0)
    block = g.writing(2, parent=1)
    assert g.state.lookup([h(1), h(2)]) == ["cxl"]
    g.state.commit(block, now=5.0)
    assert g.state.lookup([h(1), h(2), h(3)]) == ["cxl", "cxl"]
    assert block.last_access == 5.0 and g.state.index.has_children(parent.block_hash)
    assert list(g.state.index.lru["cxl"]) == [h(1), h(2)]


@pytest.mark.parametrize(("given", "generation", "dropped", "after"), [
    ("1 writing until 10", 1, True, {}),
    ("1 writing until 10", 2, False, {1: ("writing", "cxl")}),
    ("1 committed", 1, False, {1: ("committed", "cxl")}),
    ("empty", 1, False, {}),
])
def test_abort(given: str, generation: int, dropped: bool,
               after: dict[int, tuple[str, str]]) -> None:
    g = Given()
    GIVEN[given](g)
    block = g.block(1)
    assert (g.state.abort(h(1), generation) is block is not None) is dropped
    assert g.states() == after


@pytest.mark.parametrize(("now", "expired", "left"), [
    (4.9, [], [1, 2, 3]),
    (15.0, [1, 2], [3]),  # deadlines 10, 15 reached
    (99.0, [1, 2, 3], []),
])
def test_expired_reservations(now: float, expired: list[int], left: list[int]) -> None:
    g = Given()
    for n, at in ((1, 0.0), (2, 5.0), (3, 10.0)):
        g.writing(n, "nvme", now=at)
    g.committed(4, "nvme")
    gone = g.state.expired_reservations(now)
    assert [b.block_hash for b in gone] == [h(n) for n in expired]
    assert sorted(n for n, (state, _) in g.states().items() if state == "writing") == left
    assert g.used()["nvme"] == 10 * (len(left) + 1)


# --- pins and leases --------------------------------------------------------------------------
@pytest.mark.parametrize(("ask", "lease_ms", "pinned", "misses", "expires", "lru"), [
    ([1, 2, 3], 0, [1, 2], 1, 7.0 + LEASE_MS / 1000, [1, 2]),  # to the hole; default lease
    ([1, 2], 500, [1, 2], 0, 7.5, [1, 2]),
    ([1], 0, [1], 0, 7.0 + LEASE_MS / 1000, [2, 1]),  # used now: last to be evicted
    ([3, 1], 0, [], 2, 7.0 + LEASE_MS / 1000, [1, 2]),  # a chain that starts with a hole
])
def test_pin(ask: list[int], lease_ms: int, pinned: list[int], misses: int,
             expires: float, lru: list[int]) -> None:
    g = Given()
    g.chain(2)
    result = g.state.pin([h(n) for n in ask], "L", lease_ms, now=7.0)
    assert [b.block_hash for b in result.blocks] == [h(n) for n in pinned]
    assert result.misses == misses and result.lease_id == "L"
    assert result.lease_ms == (lease_ms or LEASE_MS)
    assert g.state.index.leases["L"].expires == expires
    for n in (1, 2):
        block = g.block(n)
        assert block is not None
        assert block.pins == (n in pinned)
        assert block.last_access == (7.0 if n in pinned else float(n))
    assert list(g.state.index.lru["cxl"]) == [h(n) for n in lru]


@pytest.mark.parametrize(("lease_id", "released", "pins_after"), [
    ("L", [1, 2], 0),
    ("unknown", None, 1),
])
def test_release(lease_id: str, released: list[int] | None, pins_after: int) -> None:
    g = Given()
    g.chain(2)
    g.state.pin([h(1), h(2)], "L", 0, now=0.0)
    hashes = g.state.release(lease_id)
    assert hashes == (None if released is None else [h(n) for n in released])
    assert [g.block(n).pins for n in (1, 2)] == [pins_after] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize(("now", "expired"), [(0.9, []), (1.0, ["short"]),
                                              (2.0, ["short", "long"])])
def test_expired_leases(now: float, expired: list[str]) -> None:
    g = Given()
    g.chain(1)
    g.state.pin([h(1)], "short", 1000, now=0.0)
    g.state.pin([h(1)], "long", 2000, now=0.0)
    assert g.state.expired_leases(now) == expired


def test_restored_lease_pins_what_is_still_there() -> None:
    g = Given()
    g.chain(2)
    g.state.restore_lease("L", [h(1), h(9), h(2)], ttl_ms=500, now=3.0)
    assert [g.block(n).pins for n in (1, 2)] == [1, 1]  # type: ignore[union-attr]
    assert g.state.index.leases["L"].hashes == [h(1), h(2)]
    assert g.state.index.leases["L"].expires == 3.5


# --- corruption -------------------------------------------------------------------------------
@pytest.mark.parametrize(("reported", "in_lease", "suspect"), [
    (1, True, True),
    (1, False, False),  # not a block this reader held
    (3, True, False),  # still being written
    (9, True, False),  # unknown
])
def test_reported_corrupt(reported: int, in_lease: bool, suspect: bool) -> None:
    g = Given()
    g.chain(2)
    g.writing(3)
    released = [h(reported)] if in_lease else [h(2)]
    block = g.state.reported_corrupt(h(reported), released)
    assert (block is not None and block is g.block(reported)) is suspect


@pytest.mark.parametrize(("pinned", "force", "outcome"), [
    (False, False, True),
    (True, True, True),  # corrupt: dropped under its readers, who verify what they read
    (True, False, ValueError),
])
def test_remove(pinned: bool, force: bool, outcome: bool | type[Exception]) -> None:
    g = Given()
    block = g.committed(1, "nvme")
    if pinned:
        g.state.pin([h(1)], "L", 0, now=0.0)
    if outcome is ValueError:
        with pytest.raises(ValueError):
            g.state.remove(block, force)
        return
    assert g.state.remove(block, force) is outcome
    assert g.states() == {} and g.used()["nvme"] == 0
    assert g.state.remove(block, force) is False  # gone already: nothing to do


@pytest.mark.parametrize(("data", "ok"), [
    (None, False),
    (b"abc", True),
    (b"abd", False),  # other bytes
    (b"abcd", False),  # other size
])
def test_verified(data: bytes | None, ok: bool) -> None:
    block = Block(h(1), b"", "cxl", State.COMMITTED, 3, 1, checksum=checksum(b"abc"))
    assert verified(memoryview(data) if data is not None else None, block) is ok


@pytest.mark.parametrize(("blocks", "expected"), [
    ([], []),
    ([(1, 0, "cxl"), (2, 1, "cxl"), (3, 2, "cxl")], [("cxl", [1, 2, 3], 0)]),
    ([(1, 0, "cxl"), (2, 1, "nvme")], [("cxl", [1], 0), ("nvme", [2], 1)]),
    ([(1, 0, "cxl"), (5, 4, "cxl")], [("cxl", [1], 0), ("cxl", [5], 4)]),  # not consecutive
])
def test_chains_group_consecutive_blocks_of_a_tier(
        blocks: list[tuple[int, int, str]], expected: list[tuple[str, list[int], int]]) -> None:
    given = [Block(h(n), h(parent), tier, State.COMMITTED, 1, 1) for n, parent, tier in blocks]
    assert chains(given) == [(tier, [h(n) for n in group], h(parent))
                             for tier, group, parent in expected]
