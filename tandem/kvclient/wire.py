"""Formats shared by the KV store and its clients: block headers, arena geometry, checksums, and a
copy-avoiding codec for the two bulk messages (``PutRequest`` and ``GetResponse``).

The codec writes and reads the exact protobuf wire format of those messages (any protobuf client
interoperates); it only avoids the extra copies that generic parsing makes of multi-MiB payloads.
"""

from __future__ import annotations

import dataclasses
import struct

import xxhash

from tandem.v1 import kvstore_pb2

HASH_BYTES = 16
HEADER = struct.Struct("<IIQQQ16s16s")  # magic, state, generation, size, checksum, hash, parent
HEADER_BYTES = HEADER.size  # 64
BLOCK_MAGIC = 0x424B5654  # "TVKB"
SUPER = struct.Struct("<8sIQQQ")  # magic, version, slot_bytes, n_slots, data_offset
SUPER_MAGIC = b"TKVARENA"
SUPER_VERSION = 1
PAGE = 4096

LOCAL, DATAPLANE, GRPC = "local", "dataplane", "grpc"
"""How a transfer travels (same host through the arena and block files; across hosts on the
data plane or over gRPC): the store metrics' ``path`` label and the ``tandem.kv.transport``
attribute of client and store spans."""

STATE_FREE = 0
STATE_WRITING = 1
STATE_COMMITTED = 2


def checksum(data: bytes | bytearray | memoryview) -> int:
    """xxh3-64 of a payload (~15 GB/s here; a fraction of a memcpy)."""
    return int(xxhash.xxh3_64_intdigest(data))


Checksum = xxhash.xxh3_64
"""The incremental form of ``checksum`` (``update`` chunk by chunk, then ``intdigest``)."""

COPY_STEP = 256 * 1024
"""Bytes per step of ``copy_checksummed``: a step's source and destination stay in a 1 MiB L2
cache, so the checksum reads them from the cache instead of a second pass over memory."""


def copy_checksummed(target: memoryview, source: bytes | bytearray | memoryview) -> int:
    """Copies ``source`` into ``target`` (same length) and returns the checksum of the bytes
    written, in one pass over memory (measured: 0.89x a plain memcpy, against 0.59x for a copy
    with the checksum on a helper thread, on 2 shared cores)."""
    data = memoryview(source).cast("B")
    if len(target) != len(data):
        raise ValueError(f"target holds {len(target)} bytes, source {len(data)}")
    hasher = Checksum()
    for offset in range(0, len(data), COPY_STEP):
        end = offset + COPY_STEP
        target[offset:end] = data[offset:end]
        hasher.update(target[offset:end])
    return int(hasher.intdigest())


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
    def header_table_offset(self) -> int:
        return PAGE

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


# --- protobuf wire codec for the bulk messages -------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(raw: bytes | memoryview) -> list[tuple[int, int | memoryview]]:
    """(field number, value) pairs: ints for varints, memoryviews for length-delimited."""
    buf = memoryview(raw)
    pos = 0
    out: list[tuple[int, int | memoryview]] = []
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            out.append((number, value))
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            out.append((number, buf[pos:pos + length]))
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != len(buf):
        raise ValueError("truncated message")
    return out


def _bytes_field(number: int, value: bytes | memoryview) -> list[bytes | memoryview]:
    if not len(value):
        return []
    return [_varint(number << 3 | 2) + _varint(len(value)), value]


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


@dataclasses.dataclass
class PutChunk:
    """A decoded ``PutRequest`` whose ``data`` is a view of the received message (no copy)."""

    block_hash: bytes = b""
    data: memoryview = dataclasses.field(default_factory=lambda: memoryview(b""))
    block_bytes: int = 0
    checksum: int = 0
    parent_hash: bytes = b""
    tier: int = 0


def encode_put(chunk: PutChunk | kvstore_pb2.PutRequest) -> bytes:
    if isinstance(chunk, kvstore_pb2.PutRequest):
        return chunk.SerializeToString()
    parts: list[bytes | memoryview] = [
        *_bytes_field(1, chunk.block_hash), *_bytes_field(2, chunk.data),
        _int_field(3, chunk.block_bytes), _int_field(4, chunk.checksum),
        *_bytes_field(5, chunk.parent_hash), _int_field(6, chunk.tier)]
    return b"".join(parts)


def decode_put(raw: bytes) -> PutChunk:
    chunk = PutChunk()
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, memoryview):
            chunk.block_hash = bytes(value)
        elif number == 2 and isinstance(value, memoryview):
            chunk.data = value
        elif number == 3 and isinstance(value, int):
            chunk.block_bytes = value
        elif number == 4 and isinstance(value, int):
            chunk.checksum = value
        elif number == 5 and isinstance(value, memoryview):
            chunk.parent_hash = bytes(value)
        elif number == 6 and isinstance(value, int):
            chunk.tier = value
    return chunk


@dataclasses.dataclass
class GetChunk:
    """A decoded ``GetResponse`` whose ``data`` is a view of the received message (no copy)."""

    lease_id: str = ""
    location: kvstore_pb2.BlockLocation | None = None
    data: memoryview = dataclasses.field(default_factory=lambda: memoryview(b""))
    block_hash: bytes = b""


def encode_get(chunk: GetChunk | kvstore_pb2.GetResponse | bytes) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, kvstore_pb2.GetResponse):
        return chunk.SerializeToString()
    location = chunk.location.SerializeToString() if chunk.location is not None else b""
    parts: list[bytes | memoryview] = [
        *_bytes_field(1, chunk.lease_id.encode()), *_bytes_field(2, location),
        *_bytes_field(3, chunk.data), *_bytes_field(4, chunk.block_hash)]
    if chunk.location is not None and not location:
        parts.insert(0, _varint(2 << 3 | 2) + _varint(0))  # present but all-default location
    return b"".join(parts)


def decode_get(raw: bytes) -> GetChunk:
    chunk = GetChunk()
    for number, value in _fields(raw):
        if not isinstance(value, memoryview):
            continue
        if number == 1:
            chunk.lease_id = bytes(value).decode()
        elif number == 2:
            chunk.location = kvstore_pb2.BlockLocation.FromString(bytes(value))
        elif number == 3:
            chunk.data = value
        elif number == 4:
            chunk.block_hash = bytes(value)
    return chunk
