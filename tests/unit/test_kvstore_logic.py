"""KV store pure logic: metadata state machine, tier policy, slot allocator, reconcile, codec."""

from __future__ import annotations

import pytest

from services.kvstore.core.capacity import SlotAllocator
from services.kvstore.core.metadata import Block, CommitError, Index, ReserveOutcome, State
from services.kvstore.core.policy import (
    ChildCounter,
    TierSpec,
    bytes_to_free,
    select_victims,
    should_promote,
)
from services.kvstore.core.reconcile import FileEntry, Record, plan
from tandem.kvclient.block_format import (
    HEADER_BYTES,
    STATE_COMMITTED,
    STATE_WRITING,
    ArenaGeometry,
    BlockHeader,
)
from tandem.kvclient.protobuf_codec import (
    GetChunk,
    PutChunk,
    decode_get,
    decode_put,
    encode_get,
    encode_put,
)
from tandem.v1 import kvstore_pb2


def h(n: int) -> bytes:
    return n.to_bytes(16, "big")


def writing(n: int, parent: int | None = None, tier: str = "cxl", size: int = 10,
            gen: int = 1, deadline: float = 100.0) -> Block:
    return Block(h(n), h(parent) if parent is not None else b"", tier, State.WRITING, size, gen,
                 deadline=deadline)


def committed_chain(index: Index, count: int, tier: str = "cxl", size: int = 10) -> None:
    for n in range(count):
        index.add_writing(writing(n, n - 1 if n else None, tier, size, gen=n))
        assert isinstance(index.commit(h(n), n, 0, now=float(n)), Block)


# --- metadata state machine -----------------------------------------------------------------
@pytest.mark.parametrize(("setup", "now", "expected", "reclaimed"), [
    ("none", 0.0, ReserveOutcome.RESERVE, False),
    ("writing", 50.0, ReserveOutcome.IN_PROGRESS, False),
    ("writing", 100.0, ReserveOutcome.RESERVE, True),  # expired reservation is reclaimed
    ("committed", 1000.0, ReserveOutcome.ALREADY_PRESENT, False),
])
def test_reserve_outcomes(setup: str, now: float, expected: ReserveOutcome,
                          reclaimed: bool) -> None:
    index = Index(["cxl"])
    if setup != "none":
        index.add_writing(writing(1))
    if setup == "committed":
        index.commit(h(1), 1, 7, now=1.0)
    outcome, expired = index.check_reserve(h(1), now)
    assert outcome is expected
    assert (expired is not None) is reclaimed
    if reclaimed:
        assert index.get(h(1)) is None and index.used["cxl"] == 0


@pytest.mark.parametrize(("hash_n", "gen", "expected"), [
    (1, 1, None), (1, 2, CommitError.GENERATION), (9, 1, CommitError.UNKNOWN)])
def test_commit_checks_reservation(hash_n: int, gen: int, expected: CommitError | None) -> None:
    index = Index(["cxl"])
    index.add_writing(writing(1))
    result = index.commit(h(hash_n), gen, 5, now=1.0)
    if expected is None:
        assert isinstance(result, Block) and result.state is State.COMMITTED
        assert index.commit(h(1), 1, 5, 1.0) is CommitError.ALREADY_COMMITTED
    else:
        assert result is expected


def test_only_committed_blocks_are_visible_and_prefix_stops_at_holes() -> None:
    index = Index(["cxl"])
    committed_chain(index, 3)
    index.add_writing(writing(3, 2))
    assert [b.block_hash for b in index.prefix([h(0), h(1), h(2), h(3)])] == [h(0), h(1), h(2)]
    assert index.prefix([h(1), h(0)])[0].block_hash == h(1)
    assert index.prefix([h(9), h(0)]) == []


def test_abort_and_expiry_free_reservations() -> None:
    index = Index(["cxl"])
    index.add_writing(writing(1, deadline=5.0))
    index.add_writing(writing(2, deadline=50.0))
    assert index.abort(h(2), 99) is None  # wrong generation: not the writer's reservation
    assert index.abort(h(2), 1) is not None
    assert [b.block_hash for b in index.expired_writing(10.0)] == [h(1)]
    assert index.blocks == {} and index.used["cxl"] == 0
    assert index.writing == {}


def test_only_reservations_are_walked_for_expiry() -> None:
    index = Index(["cxl"])
    for n in range(3):
        index.add_writing(writing(n, deadline=5.0))
    assert isinstance(index.commit(h(0), 1, 7, 1.0), Block)
    assert set(index.writing) == {h(1), h(2)}  # committed: no longer a reservation
    assert [b.block_hash for b in index.expired_writing(4.0)] == []
    assert sorted(b.block_hash for b in index.expired_writing(6.0)) == [h(1), h(2)]
    assert index.writing == {} and set(index.blocks) == {h(0)}


def test_pins_block_removal_and_release() -> None:
    index = Index(["cxl"])
    committed_chain(index, 2)
    index.pin("lease", [h(0), h(1)], expires=10.0)
    with pytest.raises(ValueError, match="pinned"):
        index.remove(h(1))
    assert index.expired_leases(5.0) == [] and index.expired_leases(10.0) == ["lease"]
    assert index.release("lease") == [h(0), h(1)]
    assert index.release("lease") == []
    index.remove(h(1))
    assert not index.has_children(h(0))


def test_move_updates_tier_accounting_and_lru() -> None:
    index = Index(["cxl", "nvme"])
    committed_chain(index, 2)
    index.move(h(0), "nvme", -1, "/x", now=9.0)
    assert index.used == {"cxl": 10, "nvme": 10}
    assert [b.block_hash for b in index.lru_order("nvme")] == [h(0)]
    assert [b.block_hash for b in index.lru_order("cxl")] == [h(1)]


# --- policy ---------------------------------------------------------------------------------
SPEC = TierSpec("cxl", 100, high_watermark=0.9, low_watermark=0.5)


@pytest.mark.parametrize(("used", "incoming", "expected"), [
    (0, 10, 0), (80, 10, 0), (85, 10, 45), (100, 10, 60), (0, 120, 70)])
def test_bytes_to_free_uses_watermarks(used: int, incoming: int, expected: int) -> None:
    assert bytes_to_free(SPEC, used, incoming) == expected


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.5), (0.9, 0.5), (0.5, 1.5)])
def test_bad_watermarks_are_rejected(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="watermark"):
        TierSpec("x", 10, high, low)


@pytest.mark.parametrize(("need", "drop", "expected"), [
    (10, False, [0]),        # demotion: plain LRU, chain position irrelevant
    (30, False, [0, 1, 2]),
    (10, True, [3]),         # drop: only the leaf of the chain
    (30, True, [3, 2, 1]),   # dropping the leaf makes its parent a leaf
    (0, True, []),
])
def test_victims_are_lru_and_prefix_aware(need: int, drop: bool, expected: list[int]) -> None:
    index = Index(["cxl"])
    committed_chain(index, 4)  # h0 <- h1 <- h2 <- h3, h0 least recently used
    victims = select_victims(index.lru_order("cxl"), need, drop, ChildCounter(index.children))
    assert [v.block_hash for v in victims] == [h(n) for n in expected]


def test_pinned_and_moving_blocks_are_never_victims() -> None:
    index = Index(["cxl"])
    committed_chain(index, 3)
    index.pin("l", [h(2)], 99.0)
    assert select_victims(index.lru_order("cxl"), 100, True, ChildCounter(index.children)) == []
    index.blocks[h(0)].moving = True
    victims = select_victims(index.lru_order("cxl"), 100, False, ChildCounter(index.children))
    assert [v.block_hash for v in victims] == [h(1)]


def test_branching_chain_parent_waits_for_all_children() -> None:
    index = Index(["cxl"])
    committed_chain(index, 2)  # h0 <- h1
    index.add_writing(writing(5, 0, gen=5))
    index.commit(h(5), 5, 0, now=0.5)  # h0 <- h5 too
    victims = select_victims(index.lru_order("cxl"), 30, True, ChildCounter(index.children))
    assert [v.block_hash for v in victims] == [h(1), h(5), h(0)]


@pytest.mark.parametrize(("rank", "used", "expected"), [(0, 0, False), (1, 0, True),
                                                        (1, 85, False)])
def test_promotion_only_into_room(rank: int, used: int, expected: bool) -> None:
    assert should_promote(rank, SPEC, used, 10) is expected


# --- slot allocator ---------------------------------------------------------------------------
def test_slot_allocator() -> None:
    slots = SlotAllocator(3)
    assert [slots.allocate() for _ in range(4)] == [0, 1, 2, None]
    slots.release(1)
    with pytest.raises(ValueError):
        slots.release(1)
    assert slots.allocate() == 1 and slots.free_count == 0
    fresh = SlotAllocator(3)
    fresh.claim(2)
    assert fresh.allocate() == 0 and fresh.used_count == 2
    with pytest.raises(ValueError):
        fresh.claim(2)


# --- reconcile --------------------------------------------------------------------------------
def header(n: int, state: int = STATE_COMMITTED, size: int = 10) -> BlockHeader:
    return BlockHeader(state, 1, size, 42, h(n), b"")


def test_reconcile_trusts_the_tiers() -> None:
    redis = {h(1): Record("cxl", 0, 10, 42, 1, b"", ""), h(9): Record("nvme", -1, 10, 42, 1,
                                                                       b"", "/gone")}
    arena = {("cxl", 0): header(1), ("cxl", 1): header(2, STATE_WRITING),
             ("cxl", 2): header(3), ("cxl", 3): header(4)}
    ok = {("cxl", 0), ("cxl", 3)}  # slot 2 failed its checksum
    files = {h(4): FileEntry("nvme", "/n/4", header(4), 10),   # duplicate of slot 3
             h(5): FileEntry("nvme", "/n/5", header(5), 10),
             h(6): FileEntry("nvme", "/n/6", header(6), 9),    # truncated
             h(7): FileEntry("nvme", "/n/7", header(8), 10)}   # header of another block
    result = plan(["cxl", "nvme"], redis, {h(3)}, arena, ok, files, ["/t/x.tmp"], {h(1): 5.0})
    assert {b.block_hash: b.tier for b in result.keep} == {h(1): "cxl", h(4): "cxl",
                                                           h(5): "nvme"}
    assert {b.block_hash for b in result.found} == {h(4), h(5)}
    assert result.lost == [(h(9), "nvme")]
    assert sorted(result.free_slots) == [("cxl", 1), ("cxl", 2)]
    assert sorted(result.delete_paths) == ["/n/4", "/n/6", "/n/7", "/t/x.tmp"]
    assert result.stale_writing == [h(3)] and result.corrupt == 3


@pytest.mark.parametrize("raw", [b"", b"cxl|x", b"cxl|1|2|3|4|zz|p", b"\xff"])
def test_bad_records_decode_to_none(raw: bytes) -> None:
    assert Record.decode(raw) is None


# --- wire codec -------------------------------------------------------------------------------
def test_put_codec_matches_protobuf() -> None:
    chunk = PutChunk(h(1), memoryview(b"payload"), 7, 2**63 + 5, h(0), 2)
    raw = encode_put(chunk)
    parsed = kvstore_pb2.PutRequest.FromString(raw)
    assert (parsed.block_hash, parsed.data, parsed.block_bytes, parsed.checksum,
            parsed.parent_hash, parsed.tier) == (h(1), b"payload", 7, 2**63 + 5, h(0), 2)
    back = decode_put(parsed.SerializeToString())
    assert bytes(back.data) == b"payload" and back.checksum == 2**63 + 5 and back.tier == 2


def test_get_codec_matches_protobuf() -> None:
    location = kvstore_pb2.BlockLocation(block_hash=h(3), size=4, checksum=9)
    raw = encode_get(GetChunk("lease", location, memoryview(b"data"), h(3)))
    parsed = kvstore_pb2.GetResponse.FromString(raw)
    assert parsed.lease_id == "lease" and parsed.location == location and parsed.data == b"data"
    back = decode_get(parsed.SerializeToString())
    assert back.location == location and bytes(back.data) == b"data" and back.block_hash == h(3)
    assert decode_get(encode_get(GetChunk("x"))).location is None


@pytest.mark.parametrize("raw", [b"\x0a\x05ab", b"\x12", b"\x0b", b"\x80" * 11])
def test_codec_rejects_malformed_messages(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_put(raw)


def test_header_roundtrip_and_garbage() -> None:
    packed = header(7).pack()
    assert len(packed) == HEADER_BYTES and BlockHeader.unpack(packed) == header(7)
    assert BlockHeader.unpack(bytes(64)) is None
    geometry = ArenaGeometry(8192, 3)
    assert ArenaGeometry.unpack_super(geometry.pack_super()) == geometry
    assert geometry.slot_of(geometry.slot_offset(2)) == 2
    with pytest.raises(ValueError):
        geometry.slot_of(geometry.slot_offset(1) + 1)


def test_reconcile_plans_from_what_each_tier_holds() -> None:
    from services.kvstore.core.reconcile import TierContents, plan_for

    contents = {
        "cxl": TierContents(slot_headers={0: header(1), 1: header(2)}, verified_slots={0}),
        "nvme": TierContents(files={h(1): FileEntry("nvme", "/n/1", header(1), 10),
                                    h(3): FileEntry("nvme", "/n/3", header(3), 10)},
                             temporaries=["/t/x.tmp"]),
    }
    result = plan_for(contents, {}, set(), {})
    assert {b.block_hash: b.tier for b in result.keep} == {h(1): "cxl", h(3): "nvme"}
    assert result.free_slots == [("cxl", 1)]  # failed its checks
    assert sorted(result.delete_paths) == ["/n/1", "/t/x.tmp"]  # the slower copy goes
