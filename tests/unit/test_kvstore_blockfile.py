"""Block files: buffered and O_DIRECT writes produce the same file, on disk and on tmpfs, and a
filesystem that refuses O_DIRECT gets a buffered write; glibc memory tuning; the one-pass
copy + checksum."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kvstore.tiers.files import BlockFiles
from tandem.kvclient import checksums, memtune
from tandem.kvclient.block_format import HEADER_BYTES, STATE_COMMITTED, BlockHeader
from tandem.kvclient.blockfile import _write_direct, read_block_file, write_block_file
from tandem.kvclient.checksums import COPY_STEP, Checksum, copy_checksummed

SIZES = [1, 63, 4032, 4033, 4096, 65_536 + 7, 2_949_120]


def header(size: int, payload: bytes) -> BlockHeader:
    return BlockHeader(STATE_COMMITTED, 7, size, checksums.checksum(payload),
                            b"h" * 16, b"p" * 16)


@pytest.fixture(params=["disk", "tmpfs"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "disk":
        yield str(tmp_path)
        return
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = tempfile.mkdtemp(dir="/dev/shm", prefix="tandem-blockfile-test-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("size", SIZES)
def test_direct_and_buffered_files_are_identical(directory: str, size: int) -> None:
    payload = os.urandom(size)
    paths = {}
    for direct in (False, True, False, True):  # twice: the staging buffer is reused
        path = os.path.join(directory, f"{size}-{direct}.blk")
        write_block_file(path, header(size, payload), payload, direct=direct)
        paths[direct] = path
    raw = {direct: Path(path).read_bytes() for direct, path in paths.items()}
    assert raw[True] == raw[False]
    assert len(raw[True]) == HEADER_BYTES + size
    into = memoryview(bytearray(size))
    found, got = read_block_file(paths[True], into)
    assert found == header(size, payload) and got == size and bytes(into) == payload


def test_direct_io_is_used_and_a_refusal_falls_back(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    payload = os.urandom(5_000)
    packed = header(len(payload), payload).pack()
    assert _write_direct(str(tmp_path / "d.blk"), packed, memoryview(payload))
    real_open = os.open

    def refuse_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    assert not _write_direct(str(tmp_path / "r.blk"), packed, memoryview(payload))
    write_block_file(str(tmp_path / "r.blk"), header(len(payload), payload), payload, True)
    assert (tmp_path / "r.blk").read_bytes() == (tmp_path / "d.blk").read_bytes()


def test_a_shorter_file_reads_short(tmp_path: Path) -> None:
    payload = os.urandom(10_000)
    path = str(tmp_path / "b.blk")
    write_block_file(path, header(len(payload), payload), payload, direct=True)
    os.truncate(path, HEADER_BYTES + 5_000)
    found, _ = BlockFiles.read_into(path, len(payload))
    assert found is None  # a torn file is never a block


def test_keep_freed_memory() -> None:
    assert memtune.keep_freed_memory(0) is False  # nothing asked, nothing changed
    assert memtune.keep_freed_memory(64 << 20) is True  # glibc (the only libc we ship on)


@pytest.mark.parametrize("size", [0, 1, COPY_STEP - 1, COPY_STEP,
                                  COPY_STEP + 1, 2_949_120])
def test_copy_checksummed_copies_and_matches_the_one_shot_checksum(size: int) -> None:
    source = os.urandom(size)
    target = memoryview(bytearray(size))
    assert copy_checksummed(target, source) == checksums.checksum(source)
    assert bytes(target) == source
    incremental = Checksum()
    for offset in range(0, size, 100_000):
        incremental.update(source[offset:offset + 100_000])
    assert incremental.intdigest() == checksums.checksum(source)


def test_copy_checksummed_refuses_a_target_of_another_size() -> None:
    with pytest.raises(ValueError):
        copy_checksummed(memoryview(bytearray(9)), b"0123456789")
