"""The KV client's gRPC transport (remote, and the data plane's fallback): payloads stream over
several concurrent Put/Get calls on separate channels (connections), in chunks, encoded with the
copy-avoiding codec of ``protobuf_codec``; each chunk is checksummed as it lands. Lookup is one
unary call. It owns the client's channels, which exist before it connects (Describe uses them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from tandem.kvclient import protobuf_codec
from tandem.kvclient.checksums import Checksum, checksum
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.transport import GRPC, Buffer, PutResult, Served, Target
from tandem.service.channels import aio_channel
from tandem.service.groups import GrpcSettings
from tandem.telemetry import inject_metadata
from tandem.v1 import kvstore_pb2, kvstore_pb2_grpc

SERVICE = "/tandem.v1.KVStoreService/"
Metadata = Sequence[tuple[str, str]]


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Each channel on a connection of its own (the streams of a transfer would otherwise share
one)."""


class GrpcTransport:
    name = GRPC

    def __init__(self, address: str, settings: KVClientSettings) -> None:
        self.settings = settings
        grpc_settings = GrpcSettings(tls=settings.tls)
        self.channels = [aio_channel(address, grpc_settings, OWN_CONNECTION)
                         for _ in range(max(1, settings.streams))]
        self.stub = kvstore_pb2_grpc.KVStoreServiceStub(self.channels[0])

    async def open(self) -> None:
        """Channels connect on their first call."""

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        reply = await self.stub.Lookup(kvstore_pb2.LookupRequest(block_hashes=list(hashes)),
                                       timeout=self.settings.timeout_s,
                                       metadata=inject_metadata())
        return reply.num_prefix_blocks, list(reply.tiers)

    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        served(GRPC)
        stored, already, failed = await put_streams(
            self.channels, hashes, payloads, parent, tier, self.settings.chunk_bytes,
            self.settings.timeout_s, inject_metadata())
        return PutResult(stored, already, failed)

    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        served(GRPC)
        return await get_streams(self.channels, hashes, target, self.settings.timeout_s,
                                 inject_metadata())

    async def flush(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()



async def put_streams(channels: Sequence[grpc.aio.Channel], hashes: Sequence[bytes],
                      payloads: Sequence[Buffer], parent: bytes, tier: int, chunk_bytes: int,
                      timeout_s: float, metadata: Metadata) -> tuple[int, int, list[bytes]]:
    """(stored, already present, failed hashes); blocks are spread over the channels."""
    groups = split(len(hashes), len(channels))

    async def chunks(indices: range) -> AsyncIterator[bytes]:
        for index in indices:
            data = memoryview(payloads[index]).cast("B")
            for offset in range(0, max(len(data), 1), chunk_bytes):
                first = offset == 0
                yield protobuf_codec.encode_put(protobuf_codec.PutChunk(
                    block_hash=hashes[index] if first else b"",
                    data=data[offset:offset + chunk_bytes],
                    block_bytes=len(data) if first else 0,
                    checksum=checksum(data) if first else 0,
                    parent_hash=(hashes[index - 1] if index else parent) if first else b"",
                    tier=tier if first else 0))

    async def one(channel: grpc.aio.Channel, indices: range) -> kvstore_pb2.PutResponse:
        call = channel.stream_unary(SERVICE + "Put", request_serializer=_identity,
                                    response_deserializer=kvstore_pb2.PutResponse.FromString)
        reply: kvstore_pb2.PutResponse = await call(chunks(indices), timeout=timeout_s,
                                                    metadata=metadata)
        return reply

    replies = await asyncio.gather(*[one(channels[i], group)
                                     for i, group in enumerate(groups) if len(group)])
    failed = [h for reply in replies for h in reply.failed_hashes]
    return (sum(r.stored for r in replies), sum(r.already_present for r in replies), failed)


async def get_streams(channels: Sequence[grpc.aio.Channel], hashes: Sequence[bytes],
                      target: Target, timeout_s: float,
                      metadata: Metadata) -> tuple[list[memoryview], list[int]]:
    """(payloads, their tiers) of the leading intact blocks; ``target(index, size)`` is where
    block ``index`` lands. Contiguous runs of the chain go over the channels at once."""
    groups = split(len(hashes), len(channels), contiguous=True)

    async def one(channel: grpc.aio.Channel, indices: range) -> list[tuple[memoryview, int]]:
        call = channel.unary_stream(
            SERVICE + "Get", request_serializer=kvstore_pb2.GetRequest.SerializeToString,
            response_deserializer=protobuf_codec.decode_get)
        request = kvstore_pb2.GetRequest(block_hashes=[hashes[i] for i in indices],
                                         inline_payload=True)
        blocks: list[tuple[memoryview, int]] = []
        view: memoryview | None = None
        location: kvstore_pb2.BlockLocation | None = None
        received = 0
        crc = Checksum()
        stream = call(request, timeout=timeout_s, metadata=metadata)
        async for chunk in stream:
            if chunk.location is not None:
                location = chunk.location
                if location.block_hash != hashes[indices.start + len(blocks)]:
                    break  # not the block asked for: treat as the end of the prefix
                view, received = target(indices.start + len(blocks), location.size), 0
                crc.reset()
            if view is None or location is None:
                continue
            end = received + len(chunk.data)
            if end > len(view):
                break
            view[received:end] = chunk.data
            crc.update(view[received:end])  # while the chunk is in the cache
            received = end
            if received == location.size:
                if crc.intdigest() != location.checksum:
                    break
                blocks.append((view, location.tier))
                view = None
        stream.cancel()
        return blocks

    parts = await asyncio.gather(*[one(channels[i], group)
                                   for i, group in enumerate(groups) if len(group)])
    out: list[tuple[memoryview, int]] = []
    for group, part in zip([g for g in groups if len(g)], parts, strict=True):
        out.extend(part)
        if len(part) < len(group):
            break
    return [view for view, _ in out], [tier for _, tier in out]


def split(count: int, ways: int, contiguous: bool = False) -> list[range]:
    """Splits ``range(count)`` into at most ``ways`` ranges (contiguous or strided)."""
    ways = max(1, min(ways, count))
    if not contiguous:
        return [range(i, count, ways) for i in range(ways)]
    base, extra = divmod(count, ways)
    out, start = [], 0
    for i in range(ways):
        end = start + base + (1 if i < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def _identity(data: bytes) -> bytes:
    return data
