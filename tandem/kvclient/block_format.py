"""The block format shared by the KV store and its same-host clients: the 64-byte header in front
of every arena slot and block file, and the layout of the arena file (superblock, header table,
fixed-size slots). Pure: packing and unpacking only; ``blockfile`` and ``arena_map`` do the I/O.
"""

from __future__ import annotations

import dataclasses
import struct

HASH_BYTES = 16
HEADER = struct.Struct("<IIQQQ16s16s")  # magic, state, generation, size, checksum, hash, parent
HEADER_BYTES = HEADER.size  # 64
BLOCK_MAGIC = 0x424B5654  # "TVKB"
SUPER = struct.Struct("<8sIQQQ")  # magic, version, slot_bytes, n_slots, data_offset
SUPER_MAGIC = b"TKVARENA"
SUPER_VERSION = 1
PAGE = 4096

STATE_FREE = 0
STATE_WRITING = 1
STATE_COMMITTED = 2


def align_up(value: int, alignment: int = PAGE) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclasses.dataclass(frozen=True)
class BlockHeader:
    """The 64-byte header in front of every arena slot (in the header table) and block file."""

    state: int
    generation: int
    size: int
    checksum: int
    block_hash: bytes
    parent: bytes = b""

    def pack(self) -> bytes:
        return HEADER.pack(BLOCK_MAGIC, self.state, self.generation, self.size, self.checksum,
                           self.block_hash, self.parent.ljust(HASH_BYTES, b"\0"))

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> BlockHeader | None:
        """The header in ``raw``, or None when it is not a valid header (free slot, garbage)."""
        if len(raw) < HEADER_BYTES:
            return None
        magic, state, gen, size, crc, block_hash, parent = HEADER.unpack_from(raw)
        if magic != BLOCK_MAGIC or state not in (STATE_WRITING, STATE_COMMITTED):
            return None
        return cls(state, gen, size, crc, bytes(block_hash),
                   b"" if parent == bytes(HASH_BYTES) else bytes(parent))


@dataclasses.dataclass(frozen=True)
class ArenaGeometry:
    """Layout of the arena file: superblock page, header table, then fixed-size slots."""

    slot_bytes: int
    n_slots: int

    @property
    def data_offset(self) -> int:
        return align_up(PAGE + HEADER_BYTES * self.n_slots)

    @property
    def file_bytes(self) -> int:
        return self.data_offset + self.slot_bytes * self.n_slots

    def header_offset(self, slot: int) -> int:
        return PAGE + HEADER_BYTES * slot

    def slot_offset(self, slot: int) -> int:
        return self.data_offset + self.slot_bytes * slot

    def slot_of(self, offset: int) -> int:
        """The slot whose payload starts at ``offset``; ValueError when none does."""
        index, rest = divmod(offset - self.data_offset, self.slot_bytes)
        if rest or not 0 <= index < self.n_slots:
            raise ValueError(f"offset {offset} is not the start of a slot")
        return index

    def pack_super(self) -> bytes:
        return SUPER.pack(SUPER_MAGIC, SUPER_VERSION, self.slot_bytes, self.n_slots,
                          self.data_offset)

    @classmethod
    def unpack_super(cls, raw: bytes | memoryview) -> ArenaGeometry | None:
        magic, version, slot_bytes, n_slots, data_offset = SUPER.unpack_from(raw)
        if magic != SUPER_MAGIC or version != SUPER_VERSION:
            return None
        geometry = cls(slot_bytes, n_slots)
        return geometry if geometry.data_offset == data_offset else None
