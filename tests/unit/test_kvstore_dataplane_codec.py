"""The data-plane protocol codec (tandem.kvclient.dataplane_codec): good frames round-trip, and
every malformed header or body is a ProtocolError with a clear message, never another exception
and never a length taken on trust."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Mapping

import pytest

from tandem.kvclient import dataplane_codec as codec
from tandem.kvclient.dataplane_codec import (
    FRAME,
    REPLY_RULES,
    REQUEST_RULES,
    Frame,
    Op,
    ProtocolError,
    Status,
)

LIMITS = codec.Limits(max_hashes=64, max_block_bytes=1 << 20)
H = [bytes([i]) * 16 for i in range(1, 5)]
TRACE = codec.encode_trace({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})


def header(op: int, count: int = 0, length: int = 0, status: int = 0, flags: int = 0,
           version: int = codec.VERSION, request_id: int = 7) -> bytes:
    return FRAME.pack(version, op, status, flags, request_id, count, length)


def split(message: bytes, rules: Mapping[Op, codec.Rule] = REQUEST_RULES,
          ) -> tuple[Frame, memoryview]:
    frame = codec.decode_frame(message[:codec.FRAME_BYTES], LIMITS, rules)
    body = memoryview(message)[codec.FRAME_BYTES:]
    assert len(body) == frame.length
    return frame, body


@pytest.mark.parametrize("op", [Op.LOOKUP, Op.GET])
@pytest.mark.parametrize("trace", [b"", TRACE])
def test_hash_requests_round_trip(op: Op, trace: bytes) -> None:
    frame, body = split(codec.encode_hashes(op, 7, H, trace))
    assert (frame.op, frame.request_id, frame.count, frame.traced) == (op, 7, 4, bool(trace))
    carrier, rest = codec.split_trace(frame, body)
    assert codec.parse_hashes(rest, frame.count) == H
    assert carrier == ({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
                       if trace else {})


@pytest.mark.parametrize("parent", [b"", H[0]])
@pytest.mark.parametrize("trace", [b"", TRACE])
def test_put_head_round_trips(parent: bytes, trace: bytes) -> None:
    frame, body = split(codec.encode_put(9, 3, parent, 2, trace))
    assert (frame.op, frame.request_id, frame.count) == (Op.PUT, 9, 3)
    _, rest = codec.split_trace(frame, body)
    assert codec.parse_put(rest) == (parent, 2)


def test_block_frames_round_trip_both_ways() -> None:
    message = codec.encode_block(5, 2, H[1], 1, 4096)
    for rules in (REQUEST_RULES, REPLY_RULES):
        frame = codec.decode_frame(message[:codec.FRAME_BYTES], LIMITS, rules)
        assert (frame.op, frame.count, frame.length) == (Op.BLOCK, 2, 32 + 4096 + 8)
    assert codec.parse_block(message[codec.FRAME_BYTES:]) == (H[1], 1)
    assert codec.parse_trailer(codec.encode_trailer(0xDEADBEEFCAFEF00D)) == 0xDEADBEEFCAFEF00D


def test_replies_round_trip() -> None:
    frame, body = split(codec.encode_lookup_reply(3, [1, 1, 2]), REPLY_RULES)
    assert (frame.op, frame.count, list(body)) == (Op.LOOKUP, 3, [1, 1, 2])
    frame, body = split(codec.encode_put_reply(3, 5, 2, [H[2], H[3]]), REPLY_RULES)
    assert codec.parse_put_reply(frame, body) == (5, 2, [H[2], H[3]])
    frame, body = split(codec.encode_end(3, 4), REPLY_RULES)
    assert (frame.op, frame.count, len(body)) == (Op.END, 4, 0)
    frame, body = split(codec.encode_error(3, Status.BAD_REQUEST, "no tier 9"), REPLY_RULES)
    assert (frame.op, frame.status, bytes(body)) == (Op.ERROR, Status.BAD_REQUEST, b"no tier 9")


BAD_HEADERS = [
    ("empty", b"", REQUEST_RULES, "truncated frame header: 0 of 20"),
    ("truncated", header(Op.GET, 1, 16)[:19], REQUEST_RULES, "truncated frame header: 19"),
    ("version 0", header(Op.GET, 1, 16, version=0), REQUEST_RULES, "protocol version 0"),
    ("version 2", header(Op.GET, 1, 16, version=2), REQUEST_RULES, "protocol version 2"),
    ("unknown op", header(99), REQUEST_RULES, "unknown op 99"),
    ("a reply sent as a request", header(Op.END), REQUEST_RULES, "END is not expected"),
    ("a request sent as a reply", header(Op.GET, 1, 16), REPLY_RULES, "GET is not expected"),
    ("unknown flag", header(Op.GET, 1, 16, flags=0x80), REQUEST_RULES, "unknown flags 0x80"),
    ("trace flag on a block", header(Op.BLOCK, 0, 41, flags=1), REQUEST_RULES, "unknown flags"),
    ("status on a request", header(Op.GET, 1, 16, status=1), REQUEST_RULES, "status 1 on GET"),
    ("error without a status", header(Op.ERROR, 0, 3), REPLY_RULES, "status 0 on ERROR"),
    ("too many hashes", header(Op.GET, 65, 65 * 16), REQUEST_RULES, "count 65 is over the limit"),
    ("count beyond u32 body", header(Op.LOOKUP, 0xFFFFFFFF, 0), REQUEST_RULES, "over the limit"),
    ("body shorter than the hashes", header(Op.GET, 2, 31), REQUEST_RULES, "does not match"),
    ("body longer than the hashes", header(Op.LOOKUP, 2, 33), REQUEST_RULES, "does not match"),
    ("huge body", header(Op.GET, 1, 1 << 62), REQUEST_RULES, "does not match"),
    ("put head of the wrong size", header(Op.PUT, 1, 31), REQUEST_RULES, "does not match"),
    ("traced body too short", header(Op.GET, 1, 17, flags=1), REQUEST_RULES, "does not match"),
    ("trace too long", header(Op.GET, 1, 16 + 2 + 1025, flags=1), REQUEST_RULES,
     "does not match"),
    ("huge block", header(Op.BLOCK, 0, 1 << 62), REQUEST_RULES, "1 to 1048576 payload bytes"),
    ("block over the limit", header(Op.BLOCK, 0, 40 + (1 << 20) + 1), REQUEST_RULES,
     "payload bytes"),
    ("block without payload", header(Op.BLOCK, 0, 40), REQUEST_RULES, "payload bytes"),
    ("block shorter than its meta", header(Op.BLOCK, 0, 12), REQUEST_RULES, "payload bytes"),
    ("block index over the limit", header(Op.BLOCK, 64, 41), REPLY_RULES, "block index 64"),
    ("end with a body", header(Op.END, 1, 5), REPLY_RULES, "no body"),
    ("long error", header(Op.ERROR, 0, 5000, status=2), REPLY_RULES, "error message too long"),
    ("lookup reply length", header(Op.LOOKUP, 3, 4), REPLY_RULES, "one tier byte per block"),
    ("put reply length", header(Op.PUT, 1, 4 + 15), REPLY_RULES, "a put reply is"),
    ("put reply too short", header(Op.PUT, 1, 3), REPLY_RULES, "a put reply is"),
    ("put reply, too many failed", header(Op.PUT, 0, 4 + 16 * 65), REPLY_RULES, "a put reply"),
]


@pytest.mark.parametrize(("raw", "rules", "message"), [b[1:] for b in BAD_HEADERS],
                         ids=[b[0] for b in BAD_HEADERS])
def test_bad_headers_are_protocol_errors(raw: bytes, rules: Mapping[Op, codec.Rule],
                                         message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        codec.decode_frame(raw, LIMITS, rules)


def _traced(op: Op, count: int, segment: bytes, rest: bytes) -> tuple[Frame, bytes]:
    body = segment + rest
    return codec.decode_frame(header(op, count, len(body), flags=1), LIMITS,
                              REQUEST_RULES), body


BAD_BODIES = [
    ("trace length says more than it holds",
     lambda: codec.split_trace(*_traced(Op.GET, 1, struct.pack("<H", 40) + b"a:b", H[0]))),
    ("trace length says less than it holds",
     lambda: codec.split_trace(*_traced(Op.GET, 1, struct.pack("<H", 1) + b"a:b", H[0]))),
    ("trace not key:value",
     lambda: codec.split_trace(*_traced(Op.GET, 1, struct.pack("<H", 3) + b"abc", H[0]))),
    ("trace not utf-8",
     lambda: codec.split_trace(*_traced(Op.GET, 1, struct.pack("<H", 3) + b"\xff:\xfe", H[0]))),
    ("hashes of the wrong length", lambda: codec.parse_hashes(b"x" * 17, 1)),
    ("put head: parent flag 2", lambda: codec.parse_put(codec.PUT_META.pack(H[0], 2, 0))),
    ("put head: a parent without its flag",
     lambda: codec.parse_put(codec.PUT_META.pack(H[0], 0, 0))),
]


@pytest.mark.parametrize("parse", [b[1] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_protocol_errors(parse: Callable[[], object]) -> None:
    with pytest.raises(ProtocolError):
        parse()


def test_encoders_refuse_what_no_frame_can_carry() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        codec.encode_hashes(Op.GET, 1, [b"short"])
    with pytest.raises(ValueError, match="parent"):
        codec.encode_put(1, 1, b"short", 0)
    assert codec.encode_trace({}) == b""  # no context: no segment, no flag
    assert codec.encode_trace({"k": "v" * 2000}) == b""  # too long to carry: dropped
    assert len(codec.encode_error(1, Status.INTERNAL, "x" * 9000)) == \
        codec.FRAME_BYTES + codec.MAX_ERROR_BYTES


def test_random_bytes_never_escape_as_anything_but_protocol_errors() -> None:
    rng = random.Random(3)
    valid = [codec.encode_hashes(Op.GET, 1, H)[:20], codec.encode_block(1, 0, H[0], 1, 9)[:20],
             codec.encode_put(1, 2, b"", 0)[:20], codec.encode_end(1, 0)]
    accepted = 0
    for i in range(20_000):
        if i % 2:
            raw = bytearray(rng.getrandbits(8) for _ in range(rng.choice([20, 20, 20, 7, 33])))
        else:  # a valid header with one byte changed
            raw = bytearray(rng.choice(valid))
            raw[rng.randrange(20)] = rng.getrandbits(8)
        for rules in (REQUEST_RULES, REPLY_RULES):
            try:
                frame = codec.decode_frame(bytes(raw), LIMITS, rules)
            except ProtocolError:
                continue
            accepted += 1
            assert frame.length <= codec.BLOCK_OVERHEAD + LIMITS.max_block_bytes
    assert accepted  # the mutations do reach the rules, not only the version check
