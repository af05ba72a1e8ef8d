"""The token stream's frames: round trips, frames cut anywhere, and what a bad peer sends."""

from __future__ import annotations

import struct

import grpc
import pytest

from tandem.tokenstream.frames import (
    HEADER,
    FrameBuffer,
    Kind,
    ProtocolError,
    error_frame,
    frame,
    open_frame,
    parse_error,
    parse_open,
)

LIMIT = 1024


def feed_all(buffer: FrameBuffer, data: bytes, piece: int) -> list[tuple[Kind, bytes]]:
    frames = []
    for start in range(0, len(data), piece):
        frames += buffer.feed(data[start:start + piece])
    return frames


@pytest.mark.parametrize("piece", [1, 2, 5, 6, 7, 64, 10_000])
def test_frames_cut_at_any_byte_come_out_whole_and_in_order(piece: int) -> None:
    sent = [(Kind.MESSAGE, b"a"), (Kind.MESSAGE, b""), (Kind.MESSAGE, b"x" * 300),
            (Kind.END, b"")]
    data = b"".join(frame(kind, body) for kind, body in sent)
    assert feed_all(FrameBuffer(LIMIT), data, piece) == sent


@pytest.mark.parametrize("metadata", [
    (),
    (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),),
    (("a", "1"), ("b", "ü")),
])
def test_open_carries_metadata_and_request(metadata: tuple[tuple[str, str], ...]) -> None:
    [(kind, body)] = FrameBuffer(LIMIT).feed(open_frame(metadata, b"\x08\x01request"))
    assert kind is Kind.OPEN
    assert parse_open(body) == (metadata, b"\x08\x01request")


@pytest.mark.parametrize("code, details, trailers", [
    (grpc.StatusCode.UNAVAILABLE, "the worker is draining", ()),
    (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long",
     (("tandem-error-bin", b"\x00\xff\x10"), ("grpc-retry-pushback-ms", "250"))),
    (grpc.StatusCode.UNKNOWN, "", ()),
])
def test_error_round_trips_code_details_and_binary_trailers(
        code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str | bytes], ...]
) -> None:
    [(kind, body)] = FrameBuffer(LIMIT).feed(error_frame(code, details, trailers))
    assert kind is Kind.ERROR
    assert parse_error(body) == (code, details, trailers)


@pytest.mark.parametrize("data, why", [
    (HEADER.pack(LIMIT + 1, Kind.MESSAGE), "frame body of 1025 bytes"),
    (HEADER.pack(0, 0), "unknown frame kind 0"),
    (HEADER.pack(0, 9), "unknown frame kind 9"),
])
def test_a_bad_header_is_refused_before_its_body_arrives(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        FrameBuffer(LIMIT).feed(data)


@pytest.mark.parametrize("body, why", [
    (b"\x01", "without its metadata length"),
    (struct.pack("<H", 10) + b"[]", "longer than its frame"),
    (struct.pack("<H", 5) + b"nope!", "not JSON pairs"),
    (struct.pack("<H", 5) + b"[[1]]", "not JSON pairs"),
])
def test_a_bad_open_is_a_protocol_error(body: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_open(body)


@pytest.mark.parametrize("body", [b"{", b'{"code": 99, "details": "", "trailers": []}',
                                  b'{"details": ""}', b'{"code": 14, "details": "", '
                                                      b'"trailers": [["k-bin", "%%%"]]}'])
def test_an_unreadable_error_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError, match="unreadable ERROR"):
        parse_error(body)


def test_metadata_too_long_for_its_length_field_is_refused() -> None:
    with pytest.raises(ValueError, match="call metadata"):
        open_frame((("k", "v" * 70_000),), b"")
