"""Tier backends behind one shape: an arena of slots (``cxl``) and a directory of block files
(``nvme``). A new kind of tier (another memory tier, an object store) implements the same
methods. File I/O runs in a thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeAlias

from services.kvstore.arena import Arena, SlotAllocator
from services.kvstore.metadata import Block
from services.kvstore.nvme import BlockFiles
from services.kvstore.policy import TierSpec
from tandem.kvclient.block_format import STATE_COMMITTED, STATE_WRITING, BlockHeader
from tandem.kvclient.checksums import checksum
from tandem.v1 import common_pb2, kvstore_pb2

StorageTier: TypeAlias = common_pb2.StorageTier.ValueType
STORAGE_OF: dict[str, StorageTier] = {
    "cxl": common_pb2.STORAGE_TIER_CXL, "nvme": common_pb2.STORAGE_TIER_NVME}


def header_of(block: Block, state: int = STATE_COMMITTED) -> BlockHeader:
    return BlockHeader(state, block.generation, block.size, block.checksum, block.block_hash,
                       block.parent)


class Tier(Protocol):
    name: str
    spec: TierSpec
    storage: StorageTier

    def footprint(self, size: int) -> int: ...
    def used_bytes(self, index_used: int) -> int: ...
    def fits(self, size: int) -> bool: ...
    def has_room(self, size: int, index_used: int) -> bool: ...
    def allocate(self, block: Block) -> bool: ...
    async def free(self, block: Block) -> None: ...
    async def install(self, block: Block, data: memoryview) -> None: ...
    async def read(self, block: Block) -> memoryview | None: ...
    def location(self, block: Block) -> kvstore_pb2.BlockLocation: ...
    def describe_path(self) -> str: ...


class ArenaTier:
    """Fixed-size slots in a shared, pre-faulted memory arena."""

    def __init__(self, name: str, spec: TierSpec, arena: Arena) -> None:
        self.name, self.spec, self.arena = name, spec, arena
        self.storage: StorageTier = STORAGE_OF.get(name, common_pb2.STORAGE_TIER_CXL)
        self.slot_bytes = arena.geometry.slot_bytes
        self.allocator = SlotAllocator(arena.geometry.n_slots)

    def footprint(self, size: int) -> int:
        return self.slot_bytes

    def used_bytes(self, index_used: int) -> int:
        return self.allocator.used_count * self.slot_bytes

    def fits(self, size: int) -> bool:
        return 0 < size <= self.slot_bytes

    def has_room(self, size: int, index_used: int) -> bool:
        return (self.allocator.free_count > 0
                and self.used_bytes(0) + self.slot_bytes <= self.spec.capacity_bytes)

    def allocate(self, block: Block) -> bool:
        slot = self.allocator.allocate()
        if slot is None:
            return False
        block.slot, block.path = slot, ""
        self.arena.write_header(slot, header_of(block, STATE_WRITING))
        return True

    def commit_header(self, block: Block) -> None:
        self.arena.write_header(block.slot, header_of(block))

    def payload(self, block: Block) -> memoryview:
        return self.arena.payload(block.slot, block.size)

    async def free(self, block: Block) -> None:
        if block.slot >= 0:
            self.arena.write_header(block.slot, None)
            self.allocator.release(block.slot)
            block.slot = -1

    async def install(self, block: Block, data: memoryview) -> None:
        self.payload(block)[:] = data
        self.commit_header(block)

    async def read(self, block: Block) -> memoryview | None:
        return self.payload(block)

    def location(self, block: Block) -> kvstore_pb2.BlockLocation:
        return kvstore_pb2.BlockLocation(
            block_hash=block.block_hash, tier=self.storage,
            offset=self.arena.geometry.slot_offset(block.slot), size=block.size,
            generation=block.generation, checksum=block.checksum)

    def describe_path(self) -> str:
        return self.arena.path


class FileTier:
    """One file per block in a directory; durable (fsynced) before commit. Blocks moved in
    from a faster tier (demoted: least recently used) are written with O_DIRECT when
    ``direct_io``, since nobody is about to read them (``tandem.kvclient.blockfile``)."""

    def __init__(self, name: str, spec: TierSpec, files: BlockFiles,
                 direct_io: bool = False) -> None:
        self.name, self.spec, self.files, self.direct_io = name, spec, files, direct_io
        self.storage: StorageTier = STORAGE_OF.get(name, common_pb2.STORAGE_TIER_NVME)

    def footprint(self, size: int) -> int:
        return size

    def used_bytes(self, index_used: int) -> int:
        return index_used

    def fits(self, size: int) -> bool:
        return 0 < size <= self.spec.capacity_bytes

    def has_room(self, size: int, index_used: int) -> bool:
        return index_used + size <= self.spec.capacity_bytes

    def allocate(self, block: Block) -> bool:
        block.slot, block.path = -1, self.files.tmp_path(block.block_hash, block.generation)
        return True

    async def free(self, block: Block) -> None:
        if block.path:
            await asyncio.to_thread(self.files.delete, block.path)

    async def write_tmp(self, block: Block, data: memoryview | bytearray | bytes,
                        direct: bool = False) -> None:
        await asyncio.to_thread(self.files.write, block.path, header_of(block), data, direct)

    async def check_tmp(self, block: Block) -> bool:
        """The written temporary carries this block's header (hash, size, checksum)."""
        header = await asyncio.to_thread(self.files.read_header, block.path)
        return (header is not None and header.block_hash == block.block_hash
                and header.size == block.size and header.checksum == block.checksum)

    async def publish(self, blocks: list[Block]) -> None:
        moves = [(b.path, self.files.final_path(b.block_hash)) for b in blocks]
        await asyncio.to_thread(self.files.publish, moves)
        for block, (_, final) in zip(blocks, moves, strict=True):
            block.path = final

    async def install(self, block: Block, data: memoryview) -> None:
        await self.write_tmp(block, data, self.direct_io)
        await self.publish([block])

    async def read(self, block: Block) -> memoryview | None:
        header, payload = await asyncio.to_thread(self.files.read_into, block.path, block.size)
        if header is None or header.block_hash != block.block_hash:
            return None
        return payload

    def location(self, block: Block) -> kvstore_pb2.BlockLocation:
        return kvstore_pb2.BlockLocation(
            block_hash=block.block_hash, tier=self.storage, offset=0, size=block.size,
            path=block.path, generation=block.generation, checksum=block.checksum)

    def describe_path(self) -> str:
        return self.files.root


def verified(data: memoryview | None, block: Block) -> bool:
    return data is not None and len(data) == block.size and checksum(data) == block.checksum
