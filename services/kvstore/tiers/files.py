"""The ``nvme`` tier: one file per block (64-byte header + payload) in a directory.

A block file is written under a temporary name, fsynced, renamed to its final name and the
directory fsynced, and only then committed in the metadata. Every call of ``BlockFiles`` blocks:
``FileTier`` runs them in a thread pool (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Sequence

from services.kvstore.core.capacity import ByteCapacity
from services.kvstore.core.metadata import Block
from services.kvstore.core.policy import TierSpec
from services.kvstore.core.reconcile import FileEntry, TierContents
from services.kvstore.core.validate import StorageTier
from services.kvstore.settings import KVStoreSettings
from services.kvstore.tiers.base import STORAGE_OF, header_of
from tandem.kvclient.block_format import HEADER_BYTES, BlockHeader
from tandem.kvclient.blockfile import read_block_file, write_block_file
from tandem.v1 import common_pb2, kvstore_pb2


class BlockFiles:
    """Paths and file operations of a block directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blocks_dir = os.path.join(self.root, "blocks")
        self.tmp_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.blocks_dir, exist_ok=True)
        os.makedirs(self.tmp_dir, exist_ok=True)

    def final_path(self, block_hash: bytes) -> str:
        return os.path.join(self.blocks_dir, block_hash.hex() + ".blk")

    def tmp_path(self, block_hash: bytes, generation: int) -> str:
        return os.path.join(self.tmp_dir, f"{block_hash.hex()}.{generation:x}.tmp")

    @staticmethod
    def write(path: str, header: BlockHeader, payload: bytes | memoryview | bytearray,
              direct: bool = False) -> None:
        """Writes header + payload and fsyncs the file (O_DIRECT when ``direct``)."""
        write_block_file(path, header, payload, direct)

    def publish(self, moves: Iterable[tuple[str, str]]) -> None:
        """Renames written temporaries to their final names, then fsyncs the directory."""
        moved = False
        for temporary, final in moves:
            os.rename(temporary, final)
            moved = True
        if moved:
            self.fsync_dir(self.blocks_dir)

    @staticmethod
    def fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read_header(path: str) -> BlockHeader | None:
        try:
            with open(path, "rb") as handle:
                return BlockHeader.unpack(handle.read(HEADER_BYTES))
        except OSError:
            return None

    @staticmethod
    def read_into(path: str, size: int, into: bytearray | memoryview | None = None,
                  ) -> tuple[BlockHeader | None, memoryview]:
        """Header and payload of a block file (payload read into ``into`` when given)."""
        buffer = memoryview(into if into is not None else bytearray(size)).cast("B")[:size]
        header, got = read_block_file(path, buffer)
        return (header if got == size else None), buffer

    @staticmethod
    def delete(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def scan(self) -> tuple[dict[bytes, tuple[str, BlockHeader | None, int]], list[str]]:
        """Block files by hash (path, header, payload size) and leftover temporaries."""
        found: dict[bytes, tuple[str, BlockHeader | None, int]] = {}
        for entry in os.scandir(self.blocks_dir):
            name = entry.name
            if not name.endswith(".blk"):
                continue
            try:
                block_hash = bytes.fromhex(name[:-4])
            except ValueError:
                block_hash = b""
            size = entry.stat().st_size - HEADER_BYTES
            found[block_hash or name.encode()] = (entry.path, self.read_header(entry.path), size)
        temporaries = [entry.path for entry in os.scandir(self.tmp_dir)]
        return found, temporaries


class FileTier(ByteCapacity):
    """One file per block in a directory; durable (fsynced) before commit. Blocks moved in
    from a faster tier (demoted: least recently used) are written with O_DIRECT when
    ``direct_io``, since nobody is about to read them (``tandem.kvclient.blockfile``)."""

    def __init__(self, name: str, spec: TierSpec, files: BlockFiles,
                 direct_io: bool = False) -> None:
        super().__init__(name, spec)
        self.files, self.direct_io = files, direct_io
        self.storage: StorageTier = STORAGE_OF.get(name, common_pb2.STORAGE_TIER_NVME)

    def prepare(self, block: Block) -> None:
        block.path = self.files.tmp_path(block.block_hash, block.generation)

    async def free(self, block: Block) -> None:
        if block.path:
            await asyncio.to_thread(self.files.delete, block.path)

    async def write_tmp(self, block: Block, data: memoryview | bytearray | bytes,
                        direct: bool = False) -> None:
        await asyncio.to_thread(self.files.write, block.path, header_of(block), data, direct)

    def receive_buffer(self, block: Block) -> memoryview:
        return memoryview(bytearray(block.size))  # the block file's contents, written after

    async def keep_received(self, block: Block, received: memoryview) -> None:
        await self.write_tmp(block, received)

    async def check_written(self, block: Block, recompute_checksum: bool) -> bool:
        """The written temporary carries this block's header (hash, size, checksum); a
        client's checksum of the payload itself is checked by every read."""
        header = await asyncio.to_thread(self.files.read_header, block.path)
        return (header is not None and header.block_hash == block.block_hash
                and header.size == block.size and header.checksum == block.checksum)

    async def publish(self, blocks: Sequence[Block]) -> None:
        moves = [(b.path, self.files.final_path(b.block_hash)) for b in blocks]
        await asyncio.to_thread(self.files.publish, moves)
        for block, (_, final) in zip(blocks, moves, strict=True):
            block.path = final

    def mark_committed(self, block: Block) -> None:
        """Nothing to do: the file under its final name is the committed block."""

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

    async def scan(self, verify: bool) -> TierContents:
        """Block files and leftover temporaries (a file's payload is verified when read)."""
        found, temporaries = await asyncio.to_thread(self.files.scan)
        return TierContents(
            files={block_hash: FileEntry(self.name, path, header, size)
                   for block_hash, (path, header, size) in found.items()},
            temporaries=temporaries)

    def forget_slots(self, slots: Sequence[int]) -> None:
        """Nothing to do: a file tier has no slots."""

    def claim(self, block: Block) -> None:
        """Nothing to do: the index accounts a file's bytes."""

    def close(self) -> None:
        """Nothing to do: no file stays open."""


def build(name: str, settings: KVStoreSettings) -> FileTier:
    """The block-file tier of ``--nvme-*``."""
    spec = TierSpec(name, settings.nvme_capacity_bytes, settings.high_watermark,
                    settings.low_watermark)
    return FileTier(name, spec, BlockFiles(settings.nvme_path), settings.nvme_direct_io)
