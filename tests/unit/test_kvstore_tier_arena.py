"""The arena tier (``tiers.arena.ArenaTier``, kind ``cxl``) through the ``Tier`` protocol: a
block's life in a slot (reserve, receive, commit, read, free), and what a restart finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kvstore.core.metadata import Block, State
from services.kvstore.core.policy import TierSpec
from services.kvstore.tiers.arena import Arena, ArenaTier
from services.kvstore.tiers.base import Tier
from tandem.kvclient.block_format import STATE_COMMITTED, STATE_WRITING
from tandem.kvclient.checksums import checksum
from tandem.v1 import common_pb2
from tests.unit.kvstore_given import reserve

SLOT = 4096


def arena_tier(path: Path, slots: int = 4) -> ArenaTier:
    arena = Arena(str(path / "arena"), SLOT, slots, populate=False)
    return ArenaTier("cxl", TierSpec("cxl", slots * SLOT), arena)


def block(n: int, size: int = 100) -> Block:
    return Block(n.to_bytes(16, "big"), b"", "cxl", State.WRITING, size, generation=n)


async def test_a_block_lives_in_its_slot(tmp_path: Path) -> None:
    tier: Tier = arena_tier(tmp_path)
    assert tier.slot_bytes == SLOT and tier.storage == common_pb2.STORAGE_TIER_CXL
    first, second = block(1), block(2)
    assert reserve(tier, first) and reserve(tier, second)
    assert (first.slot, second.slot) == (0, 1)
    assert isinstance(tier, ArenaTier)
    header = tier.arena.read_header(0)
    assert header is not None and header.state == STATE_WRITING
    payload = bytes(range(100))
    target = tier.receive_buffer(first)
    target[:] = payload  # a remote put receives straight into the slot
    first.checksum = checksum(payload)
    await tier.keep_received(first, target)
    assert await tier.check_written(first, recompute_checksum=True)
    await tier.publish([first])
    tier.mark_committed(first)
    header = tier.arena.read_header(0)
    assert header is not None and header.state == STATE_COMMITTED
    assert header.checksum == first.checksum
    data = await tier.read(first)
    assert data is not None and bytes(data) == payload
    location = tier.location(first)
    assert (location.offset, location.size, location.path) == (
        tier.arena.geometry.slot_offset(0), 100, "")
    await tier.free(first)
    assert first.slot == -1 and tier.arena.read_header(0) is None
    assert tier.allocator.used_count == 1
    del target, data


@pytest.mark.parametrize(("recompute", "written"), [(True, False), (False, True)])
async def test_commit_checks_the_slot_only_when_asked(tmp_path: Path, recompute: bool,
                                                      written: bool) -> None:
    tier = arena_tier(tmp_path)
    one = block(1)
    assert reserve(tier, one)
    one.checksum = checksum(b"not what the slot holds")
    assert await tier.check_written(one, recompute_checksum=recompute) is written


async def test_a_restart_finds_committed_slots_and_verifies_them(tmp_path: Path) -> None:
    tier = arena_tier(tmp_path)
    good, bad, unfinished = block(1), block(2), block(3)
    for each in (good, bad, unfinished):
        assert reserve(tier, each)
    for each in (good, bad):
        each.checksum = checksum(bytes(100))
        await tier.install(each, memoryview(bytes(100)))
    tier.payload(bad)[:1] = b"x"  # corrupted after its commit
    tier.close()

    again = arena_tier(tmp_path)
    assert again.arena.reused
    found = await again.scan(verify=True)
    assert sorted(found.slot_headers) == [0, 1, 2]
    assert found.verified_slots == {0}
    assert (await again.scan(verify=False)).verified_slots == {0, 1, 2}  # sizes fit a slot
    again.forget_slots([1, 2])
    again.claim(good)
    assert again.allocator.used_count == 1
    assert sorted((await again.scan(verify=True)).slot_headers) == [0]
    again.close()
