"""The ``Tier`` protocol: everything the store does with a tier, whatever its kind. File I/O
runs in a thread pool, never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.kvstore.core.capacity import TierShape
from services.kvstore.core.metadata import Block
from services.kvstore.core.reconcile import TierContents
from services.kvstore.core.validate import StorageTier
from tandem.kvclient.block_format import STATE_COMMITTED, BlockHeader
from tandem.v1 import common_pb2, kvstore_pb2

STORAGE_OF: dict[str, StorageTier] = {
    "cxl": common_pb2.STORAGE_TIER_CXL, "nvme": common_pb2.STORAGE_TIER_NVME}
"""The protocol's name of a tier, by tier name."""


def header_of(block: Block, state: int = STATE_COMMITTED) -> BlockHeader:
    return BlockHeader(state, block.generation, block.size, block.checksum, block.block_hash,
                       block.parent)


class Tier(TierShape, Protocol):
    """A tier: its accounting (``TierShape``) and the I/O of its payloads."""

    storage: StorageTier

    def prepare(self, block: Block) -> None:
        """Prepares the space claimed for a new block (``claim_space``) to be written."""
        ...

    async def free(self, block: Block) -> None:
        """Erases the block and gives its space back."""
        ...

    def receive_buffer(self, block: Block) -> memoryview:
        """Where a remote put receives the payload of a reserved block."""
        ...

    async def keep_received(self, block: Block, received: memoryview) -> None:
        """Makes the payload received into ``receive_buffer(block)`` the block's written
        payload (``block.checksum`` set)."""
        ...

    async def check_written(self, block: Block, recompute_checksum: bool) -> bool:
        """At commit: the written payload is the block's (``recompute_checksum``: even where
        that costs a pass over the bytes)."""
        ...

    async def publish(self, blocks: Sequence[Block]) -> None:
        """Makes the written payloads durable under their final names, before their commit."""
        ...

    def mark_committed(self, block: Block) -> None:
        """Records in the tier itself that a block is committed (after the index does)."""
        ...

    async def install(self, block: Block, data: memoryview) -> None:
        """Writes and commits a copy of a committed block (a move between tiers)."""
        ...

    async def read(self, block: Block) -> memoryview | None:
        """The payload (unverified), or None when the tier no longer has it."""
        ...

    def location(self, block: Block) -> kvstore_pb2.BlockLocation:
        """Where a same-host client finds the block."""
        ...

    def describe_path(self) -> str:
        ...

    async def scan(self, verify: bool) -> TierContents:
        """What the tier holds, at start (``verify``: checksum every payload that is cheap to
        read)."""
        ...

    def forget_slots(self, slots: Sequence[int]) -> None:
        """Erases slots that reconcile found garbage."""
        ...

    def claim(self, block: Block) -> None:
        """Takes the space of a block that reconcile kept."""
        ...

    def close(self) -> None:
        ...
