"""The ``cxl`` tier: a pre-faulted shared arena file of fixed-size slots, and its slot allocator.

Layout (``tandem.kvclient.block_format.ArenaGeometry``): a superblock page, a table of 64-byte block
headers (one per slot), then the slots. The store owns the headers; same-host writers write
payloads straight into the slot they reserved, same-host readers copy out of pinned slots.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from tandem.kvclient.arena_map import map_file
from tandem.kvclient.block_format import (
    HEADER_BYTES,
    PAGE,
    STATE_COMMITTED,
    ArenaGeometry,
    BlockHeader,
)
from tandem.kvclient.checksums import checksum


class SlotAllocator:
    """Free slots of the arena (pure). Lowest slot first, so a small working set stays compact."""

    def __init__(self, n_slots: int) -> None:
        if n_slots <= 0:
            raise ValueError("the arena needs at least one slot")
        self.n_slots = n_slots
        self._free = list(range(n_slots - 1, -1, -1))
        self._used: set[int] = set()

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return len(self._used)

    def allocate(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self._used.add(slot)
        return slot

    def claim(self, slot: int) -> None:
        """Marks a specific slot used (reconcile at start)."""
        if slot in self._used or not 0 <= slot < self.n_slots:
            raise ValueError(f"slot {slot} cannot be claimed")
        self._free.remove(slot)
        self._used.add(slot)

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise ValueError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        self._free.append(slot)
        if len(self._free) > 1 and self._free[-1] > self._free[-2]:
            self._free.sort(reverse=True)


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

    def is_committed(self, slot: int) -> bool:
        header = self.read_header(slot)
        return header is not None and header.state == STATE_COMMITTED

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):
            self.map.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
