"""The ``nvme`` tier: one file per block (64-byte header + payload) in a directory.

A block file is written under a temporary name, fsynced, renamed to its final name and the
directory fsynced, and only then committed in the metadata. Every call here blocks: the store
runs them in a thread pool (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from tandem.kvclient.wire import HEADER_BYTES, BlockHeader


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
    def write(path: str, header: BlockHeader, payload: bytes | memoryview | bytearray) -> None:
        """Writes header + payload and fsyncs the file."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, header.pack())
            view = memoryview(payload).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

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
        with open(path, "rb", buffering=0) as handle:
            header = BlockHeader.unpack(handle.read(HEADER_BYTES))
            got = 0
            while got < size:
                count = handle.readinto(buffer[got:])
                if not count:
                    break
                got += count
        if got != size:
            return None, buffer
        return header, buffer

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
