"""Frames of the token stream (pure, no I/O): a 5-byte header (body length u32, kind u8;
little-endian) and the body.

A connection carries one call at a time: the client sends ``OPEN`` (the call's metadata and its
``GenerateRequest``), the server answers ``MESSAGE`` frames (each a ``GenerateResponse``) and
ends the call with ``END`` or ``ERROR`` (a gRPC status code, its details and its trailing
metadata, so the client raises the very ``AioRpcError`` a gRPC call would). Then the
connection can carry the next call. A client cancels a call by closing the connection.
"""

from __future__ import annotations

import base64
import enum
import struct
from collections.abc import Sequence

import grpc
import orjson

HEADER = struct.Struct("<IB")  # body length, kind
METADATA_LENGTH = struct.Struct("<H")
MAX_METADATA_BYTES = 0xFFFF
BINARY_SUFFIX = "-bin"
"""gRPC's convention: metadata keys with this suffix carry bytes (base64 inside ERROR)."""

Metadata = Sequence[tuple[str, str | bytes]]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Kind(enum.IntEnum):
    OPEN = 1
    MESSAGE = 2
    END = 3
    ERROR = 4


_KINDS = {kind.value: kind for kind in Kind}


class ProtocolError(Exception):
    """The peer sent something that is not a token-stream frame: the connection closes."""


def frame(kind: Kind, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body), kind) + body


def open_frame(metadata: Metadata, request: bytes) -> bytes:
    """The client's OPEN: the call's metadata (JSON pairs of strings) and its request."""
    encoded = orjson.dumps(list(metadata)) if metadata else b""
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"call metadata of {len(encoded)} bytes (at most {MAX_METADATA_BYTES})")
    return frame(Kind.OPEN, METADATA_LENGTH.pack(len(encoded)) + encoded + request)


def parse_open(body: bytes) -> tuple[tuple[tuple[str, str], ...], bytes]:
    """(metadata, request bytes) of an OPEN body."""
    if len(body) < METADATA_LENGTH.size:
        raise ProtocolError("OPEN without its metadata length")
    (length,) = METADATA_LENGTH.unpack_from(body)
    end = METADATA_LENGTH.size + length
    if end > len(body):
        raise ProtocolError("OPEN metadata longer than its frame")
    pairs: tuple[tuple[str, str], ...] = ()
    if length:
        try:
            pairs = tuple((str(key), str(value))
                          for key, value in orjson.loads(body[METADATA_LENGTH.size:end]))
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            raise ProtocolError(f"OPEN metadata is not JSON pairs: {error}") from None
    return pairs, body[end:]


def error_frame(code: grpc.StatusCode, details: str, trailers: Metadata = ()) -> bytes:
    return frame(Kind.ERROR, orjson.dumps({
        "code": code.value[0], "details": details,
        "trailers": [[key, base64.b64encode(value).decode() if isinstance(value, bytes)
                      else value] for key, value in trailers]}))


def parse_error(body: bytes) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    """(status code, details, trailing metadata) of an ERROR body."""
    try:
        error = orjson.loads(body)
        code = _CODES[error["code"]]
        trailers = tuple(
            (key, base64.b64decode(value, validate=True) if key.endswith(BINARY_SUFFIX)
             else value)
            for key, value in error["trailers"])
        return code, str(error["details"]), trailers
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"unreadable ERROR frame: {error!r}") from None


class FrameBuffer:
    """Cuts received bytes into frames; a body longer than ``max_body_bytes`` or an unknown
    kind raises ``ProtocolError`` before the body is buffered further."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Kind, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[Kind, bytes]] = []
        start = 0
        available = len(buffer)
        while available - start >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, start)
            if length > self.max_body_bytes:
                raise ProtocolError(f"frame body of {length} bytes (at most "
                                    f"{self.max_body_bytes})")
            known = _KINDS.get(kind)
            if known is None:
                raise ProtocolError(f"unknown frame kind {kind}")
            end = start + HEADER.size + length
            if end > available:
                break
            frames.append((known, bytes(buffer[start + HEADER.size:end])))
            start = end
        if start:
            del buffer[:start]
        return frames
