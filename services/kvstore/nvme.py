"""The ``nvme`` tier: one file per block (64-byte header + payload) in a directory.

A block file is written under a temporary name, fsynced, renamed to its final name and the
directory fsynced, and only then committed in the metadata. Every call here blocks: the store
runs them in a thread pool (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from tandem.kvclient.block_format import HEADER_BYTES, BlockHeader
from tandem.kvclient.blockfile import read_block_file, write_block_file


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

    def is_tmp(self, path: str) -> bool:
        return os.path.dirname(os.path.abspath(path)) == self.tmp_dir

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
