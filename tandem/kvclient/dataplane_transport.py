"""The KV client's data-plane transport (spec: docs/kvstore.md, "Data plane"): a small pool of
persistent TCP connections to the store; one call holds one connection.

Payloads are sent from the caller's buffers (header and payload gathered in one ``sendmsg``) and
received straight into the destination buffer, checksummed piece by piece as they land. A call
that fails here (connection refused or lost, bytes that are no frame, an ERROR frame) raises
``DataPlaneError`` and ``fallback`` repeats it over gRPC; a connection that cannot be made
(refused, unanswered) is ``unreachable`` and rests the data plane there before the next try (a
connection lost mid-call is only replaced). A call past its deadline raises TimeoutError: it is
not repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Sequence

from tandem.kvclient import dataplane_codec as codec
from tandem.kvclient.checksums import Checksum
from tandem.kvclient.dataplane_codec import Frame, Op, ProtocolError, Status
from tandem.kvclient.dataplane_socket import PIECE
from tandem.kvclient.dataplane_tls import Stream, connect
from tandem.kvclient.transport import DATAPLANE, Buffer, PutResult, Served, Target, Unavailable
from tandem.telemetry import inject_metadata

CONNECT_TIMEOUT_S = 5.0
MAX_BLOCK_BYTES = 1 << 32
"""Largest block a reply may announce (a store refuses far smaller ones)."""


class DataPlaneError(Unavailable):
    """The data plane could not serve this call; gRPC can."""

    def __init__(self, message: str, status: Status | None = None, *,
                 unreachable: bool = False) -> None:
        super().__init__(message, unreachable=unreachable)
        self.status = status


class DataPlaneTransport:
    name = DATAPLANE

    def __init__(self, host: str, port: int, connections: int, timeout_s: float,
                 tls: ssl.SSLContext | None = None, server_name: str = "") -> None:
        self.host, self.port, self.timeout_s, self.tls = host, port, timeout_s, tls
        self.server_name = server_name
        self._idle: list[Stream] = []
        self._slots = asyncio.Semaphore(max(1, connections))
        self._ids = itertools.count(1)

    async def open(self) -> None:
        """Opens the first connection now, so an unreachable data plane shows at connect."""
        async with self._call():
            pass

    async def flush(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        for stream in self._idle:
            stream.close()
        self._idle.clear()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[tuple[Stream, int]]:
        """A pooled connection and a request id for one call; a connection whose call did not
        end cleanly is closed (it may be out of step)."""
        async with self._slots:
            try:
                if self._idle:
                    stream = self._idle.pop()
                else:  # (a TimeoutError is an OSError: an unanswered connect is unreachable too)
                    async with asyncio.timeout(min(self.timeout_s, CONNECT_TIMEOUT_S)):
                        stream = await connect(self.host, self.port, self.tls,
                                               self.server_name)
            except OSError as error:
                raise DataPlaneError(
                    f"cannot connect to the data plane at {self.host}:{self.port}: {error!r}",
                    unreachable=True) from error
            try:
                yield stream, next(self._ids) & 0xFFFFFFFF
            except ProtocolError as error:
                stream.close()
                raise DataPlaneError(f"bad reply from the data plane: {error}") from error
            except ConnectionError as error:  # the next call opens a fresh connection
                stream.close()
                raise DataPlaneError(f"data-plane connection lost: {error}") from error
            except BaseException:
                stream.close()
                raise
            if not stream.closed:
                self._idle.append(stream)

    async def _reply(self, stream: Stream, request_id: int, limits: codec.Limits) -> Frame:
        frame = await stream.read_frame(limits, codec.REPLY_RULES)
        if frame.request_id != request_id:
            raise ProtocolError(f"reply to request {frame.request_id}, expected {request_id}")
        if frame.op is Op.ERROR:
            message = bytes(await stream.read_bytes(frame.length)).decode(errors="replace")
            stream.close()  # the store closes its end after an error
            try:
                status = Status(frame.status)
            except ValueError:
                status = Status.INTERNAL
            raise DataPlaneError(f"store: {message}", status)
        return frame

    # --- calls --------------------------------------------------------------------------------
    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        _check(hashes)
        limits = codec.Limits(len(hashes), MAX_BLOCK_BYTES)
        async with asyncio.timeout(self.timeout_s), self._call() as (stream, request_id):
            await stream.write(codec.encode_hashes(Op.LOOKUP, request_id, hashes))
            frame = await self._reply(stream, request_id, limits)
            if frame.op is not Op.LOOKUP:
                raise ProtocolError(f"a {frame.op.name} frame answered a LOOKUP")
            tiers = await stream.read_bytes(frame.length)
            return frame.count, list(tiers)

    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        got = await self._get(hashes, target, _trace())
        served(DATAPLANE)
        return got

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        stored, already, failed = await self._put(hashes, payloads, parent, tier, _trace())
        served(DATAPLANE)
        return PutResult(stored, already, failed)

    async def _get(self, hashes: Sequence[bytes], target: Target,
                   trace: bytes) -> tuple[list[memoryview], list[int]]:
        """(payloads, their tiers) of the leading intact blocks."""
        _check(hashes)
        limits = codec.Limits(len(hashes), MAX_BLOCK_BYTES)
        blocks: list[memoryview] = []
        tiers: list[int] = []
        meta = memoryview(bytearray(codec.META_BYTES))
        trailer = memoryview(bytearray(codec.TRAILER.size))
        async with asyncio.timeout(self.timeout_s), self._call() as (stream, request_id):
            await stream.write(codec.encode_hashes(Op.GET, request_id, hashes, trace))
            while True:
                frame = await self._reply(stream, request_id, limits)
                if frame.op is Op.END and frame.count == len(blocks):
                    return blocks, tiers
                if frame.op is not Op.BLOCK or frame.count != len(blocks):
                    raise ProtocolError(f"unexpected {frame.op.name} frame in a GET answer")
                await stream.read_into(meta)
                block_hash, tier = codec.parse_block(meta)
                if block_hash != hashes[len(blocks)]:
                    raise ProtocolError("the store sent a block that was not asked for")
                view = target(len(blocks), frame.length - codec.BLOCK_OVERHEAD)
                crc = Checksum()
                await stream.read_into(view, crc.update)
                await stream.read_into(trailer)
                if crc.intdigest() != codec.parse_trailer(trailer):  # damaged: the prefix ends
                    stream.close()
                    return blocks, tiers
                blocks.append(view)
                tiers.append(tier)

    async def _put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                   tier: int, trace: bytes) -> tuple[int, int, list[bytes]]:
        """(stored, already present, failed hashes)."""
        _check(hashes, payloads)
        if parent and len(parent) != codec.HASH_BYTES:
            raise DataPlaneError("the parent is no block hash", Status.BAD_REQUEST)
        limits = codec.Limits(len(hashes), MAX_BLOCK_BYTES)
        async with asyncio.timeout(self.timeout_s), self._call() as (stream, request_id):
            await stream.write(codec.encode_put(request_id, len(hashes), parent, tier, trace))
            for index, (block_hash, payload) in enumerate(zip(hashes, payloads, strict=True)):
                data = memoryview(payload).cast("B")
                await stream.write(codec.encode_block(request_id, index, block_hash, 0,
                                                      len(data)))
                crc = Checksum()
                for offset in range(0, len(data), PIECE):
                    piece = data[offset:offset + PIECE]
                    await stream.write(piece)
                    crc.update(piece)  # just read by the kernel's copy: from the cache
                await stream.write(codec.encode_trailer(crc.intdigest()))
            frame = await self._reply(stream, request_id, limits)
            if frame.op is not Op.PUT:
                raise ProtocolError(f"a {frame.op.name} frame answered a PUT")
            return codec.parse_put_reply(frame, await stream.read_bytes(frame.length))


def _trace() -> bytes:
    """The caller's trace context for a data-plane request."""
    return codec.encode_trace(dict(inject_metadata()))


def _check(hashes: Sequence[bytes], payloads: Sequence[Buffer] = ()) -> None:
    """What no frame can carry goes to gRPC, which answers it with a typed error."""
    if not hashes or not codec.well_formed(hashes):
        raise DataPlaneError("block hashes are 16 bytes, at least one", Status.BAD_REQUEST)
    if any(not len(memoryview(p).cast("B")) for p in payloads):
        raise DataPlaneError("a block has no payload", Status.BAD_REQUEST)
