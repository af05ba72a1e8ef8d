"""The block-file tier (``tiers.files.FileTier``, kind ``nvme``) through the ``Tier`` protocol:
a block's life as a file (temporary, checked, published, read, freed), and what a restart
finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kvstore.core.metadata import Block, State
from services.kvstore.core.policy import TierSpec
from services.kvstore.tiers.base import Tier
from services.kvstore.tiers.files import BlockFiles, FileTier
from tandem.kvclient import checksums
from tandem.v1 import common_pb2
from tests.unit.kvstore_given import reserve


def file_tier(path: Path) -> FileTier:
    return FileTier("nvme", TierSpec("nvme", 1 << 20), BlockFiles(str(path)))


def names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def block(n: int, size: int = 100) -> Block:
    return Block(n.to_bytes(16, "big"), b"", "nvme", State.WRITING, size, generation=n)


async def test_a_block_lives_in_its_file(tmp_path: Path) -> None:
    tier: Tier = file_tier(tmp_path)
    assert tier.slot_bytes == 0 and tier.storage == common_pb2.STORAGE_TIER_NVME
    one = block(1)
    assert reserve(tier, one)
    assert one.slot == -1 and Path(one.path).parent == tmp_path / "tmp"
    payload = bytes(range(100))
    received = tier.receive_buffer(one)
    assert len(received) == 100
    received[:] = payload
    one.checksum = checksums.checksum(payload)
    await tier.keep_received(one, received)
    assert await tier.check_written(one, recompute_checksum=False)
    await tier.publish([one])
    tier.mark_committed(one)
    assert names(tmp_path / "tmp") == [] and names(tmp_path / "blocks") == [
        one.block_hash.hex() + ".blk"]
    assert one.path == str(tmp_path / "blocks" / (one.block_hash.hex() + ".blk"))
    data = await tier.read(one)
    assert data is not None and bytes(data) == payload
    location = tier.location(one)
    assert (location.path, location.size, location.checksum) == (one.path, 100, one.checksum)
    await tier.free(one)
    assert names(tmp_path / "blocks") == []


@pytest.mark.parametrize(("written", "matches"), [
    ("this block", True),
    ("another checksum", False),
    ("nothing", False),
])
async def test_commit_checks_the_written_header(tmp_path: Path, written: str,
                                                matches: bool) -> None:
    tier = file_tier(tmp_path)
    one = block(1)
    reserve(tier, one)
    one.checksum = 7
    if written != "nothing":
        await tier.keep_received(one, memoryview(bytes(100)))
    if written == "another checksum":
        one.checksum = 8
    assert await tier.check_written(one, recompute_checksum=True) is matches


async def test_a_restart_finds_block_files_and_temporaries(tmp_path: Path) -> None:
    tier = file_tier(tmp_path)
    kept, unfinished = block(1), block(2)
    for each in (kept, unfinished):
        reserve(tier, each)
    kept.checksum = checksums.checksum(bytes(100))
    await tier.install(kept, memoryview(bytes(100)))
    await tier.keep_received(unfinished, memoryview(bytes(100)))

    found = await file_tier(tmp_path).scan(verify=True)
    assert list(found.files) == [kept.block_hash]
    entry = found.files[kept.block_hash]
    assert (entry.tier, entry.path, entry.payload_bytes) == ("nvme", kept.path, 100)
    assert entry.header is not None and entry.header.checksum == kept.checksum
    assert found.temporaries == [unfinished.path] and not found.slot_headers
