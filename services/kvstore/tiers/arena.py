"""The ``cxl`` tier: a pre-faulted shared arena file of fixed-size slots.

Layout (``tandem.kvclient.block_format.ArenaGeometry``): a superblock page, a table of 64-byte block
headers (one per slot), then the slots. The store owns the headers; same-host writers write
payloads straight into the slot they reserved, same-host readers copy out of pinned slots.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence

from services.kvstore.core.capacity import SlotCapacity
from services.kvstore.core.metadata import Block
from services.kvstore.core.policy import TierSpec
from services.kvstore.core.reconcile import TierContents
from services.kvstore.core.state import verified
from services.kvstore.core.validate import StorageTier
from services.kvstore.settings import KVStoreSettings
from services.kvstore.tiers.base import STORAGE_OF, header_of
from tandem.kvclient.arena_map import map_file
from tandem.kvclient.block_format import (
    HEADER_BYTES,
    PAGE,
    STATE_WRITING,
    ArenaGeometry,
    BlockHeader,
)
from tandem.kvclient.checksums import checksum
from tandem.v1 import common_pb2, kvstore_pb2


class Arena:
    """The arena file mapped by the store. Reuses an existing file with the same geometry (its
    committed blocks survive a store restart); otherwise creates it afresh."""

    def __init__(self, path: str, slot_bytes: int, n_slots: int, populate: bool = True) -> None:
        if slot_bytes <= 0 or slot_bytes % PAGE:
            raise ValueError(f"slot size must be a positive multiple of {PAGE}")
        self.path = path
        self.geometry = ArenaGeometry(slot_bytes, n_slots)
        self.reused = self._existing_matches()
        if not self.reused:
            self._create()
        self.map: mmap.mmap = map_file(path, self.geometry.file_bytes, populate)
        self.view = memoryview(self.map)

    def _existing_matches(self) -> bool:
        try:
            with open(self.path, "rb") as handle:
                found = ArenaGeometry.unpack_super(handle.read(PAGE))
            return found == self.geometry and os.path.getsize(self.path) == \
                self.geometry.file_bytes
        except (OSError, Exception):
            return False

    def _create(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        temporary = f"{self.path}.{os.getpid()}.new"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.geometry.file_bytes)
            with contextlib.suppress(OSError):  # allocate the pages now, not on first touch
                os.posix_fallocate(fd, 0, self.geometry.file_bytes)
            os.pwrite(fd, self.geometry.pack_super(), 0)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)

    def read_header(self, slot: int) -> BlockHeader | None:
        offset = self.geometry.header_offset(slot)
        return BlockHeader.unpack(self.view[offset:offset + HEADER_BYTES])

    def write_header(self, slot: int, header: BlockHeader | None) -> None:
        offset = self.geometry.header_offset(slot)
        self.view[offset:offset + HEADER_BYTES] = (
            header.pack() if header is not None else bytes(HEADER_BYTES))

    def payload(self, slot: int, size: int) -> memoryview:
        if size > self.geometry.slot_bytes:
            raise ValueError("payload larger than a slot")
        offset = self.geometry.slot_offset(slot)
        return self.view[offset:offset + size]

    def verify(self, slot: int, size: int, expected: int) -> bool:
        return checksum(self.payload(slot, size)) == expected

    def committed_headers(self) -> dict[int, BlockHeader]:
        headers: dict[int, BlockHeader] = {}
        for slot in range(self.geometry.n_slots):
            header = self.read_header(slot)
            if header is not None:
                headers[slot] = header
        return headers

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):
            self.map.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ArenaTier(SlotCapacity):
    """Fixed-size slots in a shared, pre-faulted memory arena. Payloads are written in place:
    by same-host clients into the slot they reserved, by a remote put straight into the slot."""

    def __init__(self, name: str, spec: TierSpec, arena: Arena) -> None:
        super().__init__(name, spec, arena.geometry.slot_bytes, arena.geometry.n_slots)
        self.arena = arena
        self.storage: StorageTier = STORAGE_OF.get(name, common_pb2.STORAGE_TIER_CXL)

    def prepare(self, block: Block) -> None:
        self.arena.write_header(block.slot, header_of(block, STATE_WRITING))

    def payload(self, block: Block) -> memoryview:
        return self.arena.payload(block.slot, block.size)

    async def free(self, block: Block) -> None:
        if block.slot >= 0:
            self.arena.write_header(block.slot, None)
            self.release_space(block)

    def receive_buffer(self, block: Block) -> memoryview:
        return self.payload(block)

    async def keep_received(self, block: Block, received: memoryview) -> None:
        """Nothing to write: the payload was received into the slot itself."""

    async def check_written(self, block: Block, recompute_checksum: bool) -> bool:
        return not recompute_checksum or verified(self.payload(block), block)

    async def publish(self, blocks: Sequence[Block]) -> None:
        """Nothing to do: a slot's payload is in place; its header commits it."""

    def mark_committed(self, block: Block) -> None:
        self.arena.write_header(block.slot, header_of(block))

    async def install(self, block: Block, data: memoryview) -> None:
        self.payload(block)[:] = data
        self.mark_committed(block)

    async def read(self, block: Block) -> memoryview | None:
        return self.payload(block)

    def location(self, block: Block) -> kvstore_pb2.BlockLocation:
        return kvstore_pb2.BlockLocation(
            block_hash=block.block_hash, tier=self.storage,
            offset=self.arena.geometry.slot_offset(block.slot), size=block.size,
            generation=block.generation, checksum=block.checksum)

    def describe_path(self) -> str:
        return self.arena.path

    async def scan(self, verify: bool) -> TierContents:
        """Committed headers of the arena's slots; a slot passes when its size fits a slot and
        (``verify``) its payload matches its checksum."""
        found = TierContents()
        for slot, header in self.arena.committed_headers().items():
            found.slot_headers[slot] = header
            if header.size <= self.slot_bytes and (
                    not verify or self.arena.verify(slot, header.size, header.checksum)):
                found.verified_slots.add(slot)
        return found

    def forget_slots(self, slots: Sequence[int]) -> None:
        for slot in slots:
            self.arena.write_header(slot, None)

    def claim(self, block: Block) -> None:
        self.allocator.claim(block.slot)

    def close(self) -> None:
        self.arena.close()


def build(name: str, settings: KVStoreSettings) -> ArenaTier:
    """The arena tier of ``--cxl-*`` (capacity rounded down to whole slots)."""
    slots = settings.cxl_capacity_bytes // settings.slot_bytes
    spec = TierSpec(name, slots * settings.slot_bytes, settings.high_watermark,
                    settings.low_watermark)
    arena = Arena(settings.cxl_path, settings.slot_bytes, slots, settings.populate)
    return ArenaTier(name, spec, arena)
