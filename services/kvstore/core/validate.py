"""Checks of request fields that every transport of the store applies (gRPC and the data plane):
each raises ``tandem.errors.invalid`` naming the parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from services.kvstore.settings import KVStoreSettings
from tandem.errors import invalid
from tandem.kvclient.block_format import HASH_BYTES
from tandem.v1 import common_pb2

StorageTier: TypeAlias = common_pb2.StorageTier.ValueType
"""A tier as the protocol names it."""


class Checks:
    def __init__(self, storage_of: Mapping[str, StorageTier], settings: KVStoreSettings) -> None:
        """``storage_of``: the protocol's name of each tier of the store, by tier name."""
        self.settings = settings
        self.tier_of: dict[int, str] = {int(storage): name for name, storage in storage_of.items()}
        self.storage_of: dict[str, StorageTier] = dict(storage_of)

    def hashes(self, hashes: Sequence[bytes], param: str = "block_hashes") -> list[bytes]:
        if len(hashes) > self.settings.max_chain_blocks:
            raise invalid(f"at most {self.settings.max_chain_blocks} blocks per request", param)
        for block_hash in hashes:
            if len(block_hash) != HASH_BYTES:
                raise invalid(f"block hashes are {HASH_BYTES} bytes", param)
        return list(hashes)

    def tier(self, storage: int) -> str | None:
        """The tier a client asked for (None: the fastest)."""
        if storage == 0:
            return None
        if storage not in self.tier_of:
            raise invalid(f"this store has no tier {storage}", "tier")
        return self.tier_of[storage]

    def size(self, size: int) -> int:
        if not 0 < size <= self.settings.max_block_bytes:
            raise invalid(f"block_bytes must be in (0, {self.settings.max_block_bytes}]",
                          "block_bytes")
        return size

    def parent(self, parent: bytes) -> bytes:
        if parent and len(parent) != HASH_BYTES:
            raise invalid(f"parent_hash must be empty or {HASH_BYTES} bytes", "parent_hash")
        return parent
