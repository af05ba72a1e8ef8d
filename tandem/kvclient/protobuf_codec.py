"""A copy-avoiding codec of the two bulk messages of the KV store's gRPC service (``PutRequest``
and ``GetResponse``), on the gRPC path of the store and its clients.

It writes and reads the exact protobuf wire format of those messages (varint keys and lengths,
any protobuf client interoperates); it only avoids the extra copies that generic parsing makes
of multi-MiB payloads: a decoded payload is a view of the received message.
"""

from __future__ import annotations

import dataclasses

from tandem.v1 import kvstore_pb2


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
