"""Mapping the shared arena file, pre-faulted (MAP_POPULATE), by the store and its clients."""

from __future__ import annotations

import mmap
import os

from tandem.kvclient.block_format import PAGE, ArenaGeometry


def map_file(path: str, length: int, populate: bool = True) -> mmap.mmap:
    """Maps ``length`` bytes of ``path`` shared and read-write, page tables filled up front."""
    fd = os.open(path, os.O_RDWR)
    try:
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        return mmap.mmap(fd, length, flags=flags)
    finally:
        os.close(fd)


def open_arena(path: str, populate: bool = True) -> tuple[mmap.mmap, ArenaGeometry]:
    """Maps an existing arena (a client on the store's host); ValueError when it is not one."""
    with open(path, "rb") as handle:
        geometry = ArenaGeometry.unpack_super(handle.read(PAGE))
    if geometry is None:
        raise ValueError(f"{path} is not a tandem KV arena")
    if os.path.getsize(path) < geometry.file_bytes:
        raise ValueError(f"{path} is shorter than its geometry says")
    return map_file(path, geometry.file_bytes, populate), geometry
