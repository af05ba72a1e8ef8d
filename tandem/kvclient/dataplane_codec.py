"""The KV store's data-plane protocol: frame headers, their limits and their bodies (pure, no I/O).

The specification is in docs/kvstore.md ("Data plane"). Every message is a 20-byte frame header
(version, op, status, flags, request id, count, body length; little-endian) followed by the body.
A decoder checks a header against ``Limits`` before a single body byte is read, so a peer that
sends garbage or a huge length gets a ``ProtocolError`` (the connection closes), never an
allocation of its choosing.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Mapping, Sequence

VERSION = 1
FRAME = struct.Struct("<BBBBIIQ")  # version, op, status, flags, request id, count, length
FRAME_BYTES = FRAME.size  # 20
HASH_BYTES = 16
BLOCK_META = struct.Struct("<16sB15x")  # block hash, tier; the payload follows
TRAILER = struct.Struct("<Q")  # xxh3-64 of the payload, after it: computed as the bytes go out
PUT_META = struct.Struct("<16sBB14x")  # parent hash, has parent, tier
META_BYTES = 32
BLOCK_OVERHEAD = META_BYTES + TRAILER.size
PUT_REPLY = struct.Struct("<I")  # blocks already present; the failed hashes follow
TRACE_LENGTH = struct.Struct("<H")
MAX_TRACE_BYTES = 1024
MAX_ERROR_BYTES = 4096
FLAG_TRACE = 0x01
"""The body starts with the caller's W3C trace context (u16 length + ``key:value`` lines)."""

assert BLOCK_META.size == PUT_META.size == META_BYTES


class Op(enum.IntEnum):
    LOOKUP = 1
    GET = 2
    PUT = 3
    BLOCK = 4
    END = 5
    ERROR = 6


class Status(enum.IntEnum):
    OK = 0
    BAD_REQUEST = 1
    """The request was well framed but invalid (a bad hash, size or tier): what gRPC answers
    with INVALID_ARGUMENT."""
    PROTOCOL = 2
    """The bytes were not a valid frame; the store closes the connection."""
    INTERNAL = 3


class ProtocolError(ValueError):
    """A peer sent bytes that are not a valid frame: the connection cannot continue."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_hashes: int
    """Most block hashes in one request (the store's ``--max-chain-blocks``)."""
    max_block_bytes: int
    """Largest block payload (the store's ``--max-block-bytes``)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    op: Op
    status: int
    flags: int
    request_id: int
    count: int
    length: int

    @property
    def traced(self) -> bool:
        return bool(self.flags & FLAG_TRACE)


Rule = Callable[[int, int, Limits], str | None]


def _with_trace(fixed: Callable[[int, Limits], int]) -> Rule:
    """A request body of a fixed size, optionally preceded by a trace segment."""
    def rule(count: int, extra: int, limits: Limits) -> str | None:
        if count > limits.max_hashes:
            return f"count {count} is over the limit of {limits.max_hashes}"
        return None if extra == fixed(count, limits) else "body length does not match the count"
    return rule


def _block(count: int, length: int, limits: Limits) -> str | None:
    if count >= limits.max_hashes:
        return f"block index {count} is over the limit of {limits.max_hashes}"
    if not BLOCK_OVERHEAD < length <= BLOCK_OVERHEAD + limits.max_block_bytes:
        return f"a block carries 1 to {limits.max_block_bytes} payload bytes"
    return None


def _end(count: int, length: int, limits: Limits) -> str | None:
    if count > limits.max_hashes:
        return f"count {count} is over the limit of {limits.max_hashes}"
    return None if length == 0 else "an end frame has no body"


def _error(count: int, length: int, limits: Limits) -> str | None:
    return None if length <= MAX_ERROR_BYTES else "error message too long"


def _lookup_reply(count: int, length: int, limits: Limits) -> str | None:
    if count > limits.max_hashes:
        return f"count {count} is over the limit of {limits.max_hashes}"
    return None if length == count else "one tier byte per block"


def _put_reply(count: int, length: int, limits: Limits) -> str | None:
    failed, rest = divmod(length - PUT_REPLY.size, HASH_BYTES)
    if length < PUT_REPLY.size or rest or failed > limits.max_hashes:
        return "a put reply is 4 bytes and up to max_hashes failed hashes"
    return None if count <= limits.max_hashes else "stored count over the limit"


REQUEST_RULES: Mapping[Op, Rule] = {
    Op.LOOKUP: _with_trace(lambda count, limits: HASH_BYTES * count),
    Op.GET: _with_trace(lambda count, limits: HASH_BYTES * count),
    Op.PUT: _with_trace(lambda count, limits: META_BYTES),
    Op.BLOCK: _block,
}
"""What the store accepts (BLOCK only inside a PUT)."""
REPLY_RULES: Mapping[Op, Rule] = {
    Op.LOOKUP: _lookup_reply, Op.PUT: _put_reply, Op.BLOCK: _block, Op.END: _end,
    Op.ERROR: _error,
}
"""What a client accepts."""


def decode_frame(raw: bytes | bytearray | memoryview, limits: Limits,
                 rules: Mapping[Op, Rule]) -> Frame:
    """The frame header in ``raw``; ProtocolError when it is not one that ``rules`` allow."""
    if len(raw) != FRAME_BYTES:
        raise ProtocolError(f"truncated frame header: {len(raw)} of {FRAME_BYTES} bytes")
    version, op_code, status, flags, request_id, count, length = FRAME.unpack(raw)
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
    try:
        op = Op(op_code)
    except ValueError:
        raise ProtocolError(f"unknown op {op_code}") from None
    rule = rules.get(op)
    if rule is None:
        raise ProtocolError(f"op {op.name} is not expected here")
    if flags & ~FLAG_TRACE or (flags and op not in (Op.LOOKUP, Op.GET, Op.PUT)):
        raise ProtocolError(f"unknown flags {flags:#x} on {op.name}")
    if (op is Op.ERROR) == (status == Status.OK):  # an error carries a status, nothing else does
        raise ProtocolError(f"status {status} on {op.name}")
    extra = length
    if flags & FLAG_TRACE:  # the trace segment's own length is checked once it is read
        extra = _fixed_part(op, count, length)
    problem = rule(count, extra, limits)
    if problem is not None:
        raise ProtocolError(f"{op.name}: {problem}")
    return Frame(op, status, flags, request_id, count, length)


def _fixed_part(op: Op, count: int, length: int) -> int:
    """Body bytes after a trace segment of any allowed size (-1 when none fits)."""
    fixed = META_BYTES if op is Op.PUT else HASH_BYTES * count
    trace = length - fixed
    ok = TRACE_LENGTH.size < trace <= TRACE_LENGTH.size + MAX_TRACE_BYTES
    return fixed if ok else -1


def encode_frame(op: Op, request_id: int, count: int = 0, length: int = 0,
                 status: Status = Status.OK, flags: int = 0) -> bytes:
    return FRAME.pack(VERSION, op, status, flags, request_id, count, length)


# --- bodies -------------------------------------------------------------------------------------

def encode_trace(carrier: Mapping[str, str]) -> bytes:
    """The trace segment of a request body (empty: no context to carry)."""
    text = "\n".join(f"{key}:{value}" for key, value in carrier.items()).encode()
    if not text or len(text) > MAX_TRACE_BYTES:
        return b""
    return TRACE_LENGTH.pack(len(text)) + text


def split_trace(frame: Frame, body: bytes | memoryview) -> tuple[dict[str, str], memoryview]:
    """(trace carrier, rest of the body) of a request."""
    view = memoryview(body)
    if not frame.traced:
        return {}, view
    fixed = META_BYTES if frame.op is Op.PUT else HASH_BYTES * frame.count
    size = TRACE_LENGTH.unpack_from(view)[0] if len(view) >= TRACE_LENGTH.size else -1
    end = TRACE_LENGTH.size + size
    if size <= 0 or len(view) - end != fixed:
        raise ProtocolError("the trace segment's length does not match the body")
    try:
        lines = bytes(view[TRACE_LENGTH.size:end]).decode().split("\n")
        carrier = dict(line.split(":", 1) for line in lines)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the trace segment is not key:value lines") from None
    return carrier, view[end:]


def well_formed(hashes: Sequence[bytes]) -> bool:
    """Every hash is HASH_BYTES long (checked in C: this runs on Lookup's path)."""
    return not hashes or set(map(len, hashes)) == {HASH_BYTES}


def encode_hashes(op: Op, request_id: int, hashes: Sequence[bytes], trace: bytes = b"") -> bytes:
    """A LOOKUP or GET request."""
    if not well_formed(hashes):
        raise ValueError(f"block hashes are {HASH_BYTES} bytes")
    body = b"".join(hashes)
    return encode_frame(op, request_id, len(hashes), len(trace) + len(body),
                        flags=FLAG_TRACE if trace else 0) + trace + body


def parse_hashes(body: bytes | memoryview, count: int) -> list[bytes]:
    raw = bytes(body)  # one copy of the body, then each hash is one slice
    if len(raw) != HASH_BYTES * count:
        raise ProtocolError("body length does not match the count")
    return [raw[i:i + HASH_BYTES] for i in range(0, len(raw), HASH_BYTES)]


def encode_put(request_id: int, count: int, parent: bytes, tier: int, trace: bytes = b"") -> bytes:
    """The head of a PUT request; ``count`` BLOCK frames follow."""
    if parent and len(parent) != HASH_BYTES:
        raise ValueError(f"the parent hash is empty or {HASH_BYTES} bytes")
    meta = PUT_META.pack(parent, bool(parent), tier)
    return encode_frame(Op.PUT, request_id, count, len(trace) + META_BYTES,
                        flags=FLAG_TRACE if trace else 0) + trace + meta


def parse_put(body: bytes | memoryview) -> tuple[bytes, int]:
    """(parent hash or b"", tier) of a PUT head."""
    parent, has_parent, tier = PUT_META.unpack(body)
    if has_parent not in (0, 1) or (not has_parent and parent != bytes(HASH_BYTES)):
        raise ProtocolError("malformed PUT head")
    return (bytes(parent) if has_parent else b""), tier


def encode_block(request_id: int, index: int, block_hash: bytes, tier: int, size: int) -> bytes:
    """Header and meta of a BLOCK frame; the ``size`` payload bytes and the trailer follow."""
    return encode_frame(Op.BLOCK, request_id, index, BLOCK_OVERHEAD + size) + BLOCK_META.pack(
        block_hash, tier)


def parse_block(meta: bytes | memoryview) -> tuple[bytes, int]:
    """(block hash, tier) of a BLOCK frame."""
    block_hash, tier = BLOCK_META.unpack(meta)
    return bytes(block_hash), tier


def encode_trailer(checksum: int) -> bytes:
    return TRAILER.pack(checksum)


def parse_trailer(raw: bytes | memoryview) -> int:
    """The checksum of the payload before it."""
    return int(TRAILER.unpack(raw)[0])


def encode_lookup_reply(request_id: int, tiers: Sequence[int]) -> bytes:
    return encode_frame(Op.LOOKUP, request_id, len(tiers), len(tiers)) + bytes(tiers)


def encode_put_reply(request_id: int, stored: int, already: int, failed: Sequence[bytes]) -> bytes:
    body = PUT_REPLY.pack(already) + b"".join(failed)
    return encode_frame(Op.PUT, request_id, stored, len(body)) + body


def parse_put_reply(frame: Frame, body: bytes | memoryview) -> tuple[int, int, list[bytes]]:
    """(stored, already present, failed hashes)."""
    (already,) = PUT_REPLY.unpack_from(body)
    rest = memoryview(body)[PUT_REPLY.size:]
    return frame.count, already, parse_hashes(rest, len(rest) // HASH_BYTES)


def encode_end(request_id: int, blocks: int) -> bytes:
    return encode_frame(Op.END, request_id, blocks)


def encode_error(request_id: int, status: Status, message: str) -> bytes:
    body = message.encode()[:MAX_ERROR_BYTES]
    return encode_frame(Op.ERROR, request_id, 0, len(body), status) + body
