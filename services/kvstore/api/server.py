"""gRPC transport of the KV store (framing, spans); the logic is in ``store`` and ``transfer``.
Every handler is wrapped by the kit's ``rpc`` (a ``TandemError`` ends the call with its status
and detail); the store's spans are its own (``kvstore.*``), so no server span is added.

Put and Get are registered with a copy-avoiding codec of their exact protobuf wire format
(``tandem.kvclient.protobuf_codec``); the other methods use the generated messages.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from opentelemetry.trace import Span

from services.kvstore.core.validate import Checks
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore
from services.kvstore.transfer import BlockWriter, PinnedRead, end_get_span
from tandem.errors import invalid
from tandem.kvclient.protobuf_codec import GetChunk, PutChunk, decode_put, encode_get
from tandem.kvclient.transport import GRPC, LOCAL
from tandem.service.grpc import KVSTORE_SERVICE
from tandem.service.handlers import rpc
from tandem.telemetry import extract_context, tracer
from tandem.v1 import kvstore_pb2

_tracer = tracer("tandem.kvstore")
_STATUS = {
    "reserved": kvstore_pb2.RESERVE_STATUS_RESERVED,
    "already_present": kvstore_pb2.RESERVE_STATUS_ALREADY_PRESENT,
    "in_progress": kvstore_pb2.RESERVE_STATUS_IN_PROGRESS,
    "no_space": kvstore_pb2.RESERVE_STATUS_NO_SPACE,
}


class KVStoreServicer:
    def __init__(self, store: KVStore, settings: KVStoreSettings, checks: Checks, host_id: str,
                 data_port: int = 0) -> None:
        self.store, self.settings, self.checks = store, settings, checks
        self.host_id, self.data_port = host_id, data_port

    # --- unary methods ------------------------------------------------------------------------
    @rpc(KVSTORE_SERVICE, span=False)
    async def Describe(self, request: kvstore_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> kvstore_pb2.DescribeResponse:
        tiers = [kvstore_pb2.TierInfo(tier=t.storage, capacity_bytes=t.spec.capacity_bytes,
                                      used_bytes=self.store.used(t), path=t.describe_path())
                 for t in self.store.tiers]
        slot = next((t.slot_bytes for t in self.store.tiers if t.slot_bytes), 0)
        return kvstore_pb2.DescribeResponse(host=self.host_id, tiers=tiers, slot_bytes=slot,
                                            data_port=self.data_port,
                                            data_host=self.settings.data_advertise_host)

    @rpc(KVSTORE_SERVICE, span=False)
    async def Lookup(self, request: kvstore_pb2.LookupRequest,
                     context: grpc.aio.ServicerContext) -> kvstore_pb2.LookupResponse:
        hashes = self.checks.hashes(list(request.block_hashes))
        start = time.perf_counter()
        tiers = self.store.lookup(hashes)
        reply = kvstore_pb2.LookupResponse(
            num_prefix_blocks=len(tiers), tiers=[self.checks.storage_of[t] for t in tiers])
        self.store.metrics.lookup(time.perf_counter() - start, GRPC)
        return reply

    @rpc(KVSTORE_SERVICE, span=False)
    async def Reserve(self, request: kvstore_pb2.ReserveRequest,
                      context: grpc.aio.ServicerContext) -> kvstore_pb2.ReserveResponse:
        hashes = self.checks.hashes(list(request.block_hashes))
        size, tier = self.checks.size(request.block_bytes), self.checks.tier(request.tier)
        parent = self.checks.parent(request.parent_hash)
        results = await self.store.reserve(hashes, size, tier, parent)
        out = kvstore_pb2.ReserveResponse()
        for result in results:
            reservation = out.reservations.add(status=_STATUS[result.outcome])
            if result.block is not None:
                location = self.store.tier_of(result.block).location(result.block)
                reservation.location.CopyFrom(location)
        return out

    @rpc(KVSTORE_SERVICE, span=False)
    async def Commit(self, request: kvstore_pb2.CommitRequest,
                     context: grpc.aio.ServicerContext) -> kvstore_pb2.CommitResponse:
        self.checks.hashes([b.block_hash for b in request.blocks], "blocks")
        start = time.perf_counter()
        with _tracer.start_as_current_span(
                "kvstore.commit", context=extract_context(context.invocation_metadata()),
                attributes={"tandem.kv.transport": LOCAL}) as span:
            committed, rejected = await self.store.commit(
                [(b.block_hash, b.generation, b.checksum) for b in request.blocks])
            span.set_attribute("tandem.kv.blocks", len(committed))
            span.set_attribute("tandem.kv.bytes", sum(b.size for b in committed))
            span.set_attribute("tandem.kv.tier", ",".join(sorted({b.tier for b in committed})))
        self.store.metrics.put_latency.record(time.perf_counter() - start, {"path": LOCAL})
        return kvstore_pb2.CommitResponse(committed=len(committed), rejected_hashes=rejected)

    @rpc(KVSTORE_SERVICE, span=False)
    async def Release(self, request: kvstore_pb2.ReleaseRequest,
                      context: grpc.aio.ServicerContext) -> kvstore_pb2.ReleaseResponse:
        released = await self.store.release(request.lease_id, list(request.corrupt_hashes))
        return kvstore_pb2.ReleaseResponse(released=released)

    # --- streaming methods --------------------------------------------------------------------
    @rpc(KVSTORE_SERVICE, span=False)
    async def Put(self, requests: AsyncIterator[PutChunk],
                  context: grpc.aio.ServicerContext) -> kvstore_pb2.PutResponse:
        start = time.perf_counter()
        with _tracer.start_as_current_span(
                "kvstore.put", context=extract_context(context.invocation_metadata()),
                attributes={"tandem.kv.transport": GRPC}) as span:
            writer = BlockWriter(self.store, self.checks)
            received = 0
            try:
                async for chunk in requests:
                    received += len(chunk.data)
                    await _feed(writer, chunk)
                await writer.finish()
            finally:
                await writer.close()
            span.set_attribute("tandem.kv.bytes", writer.bytes)
            span.set_attribute("tandem.kv.blocks", writer.stored)
            span.set_attribute("tandem.kv.tier", ",".join(sorted(writer.tiers)))
        self.store.metrics.remote_put(time.perf_counter() - start, received, GRPC)
        return kvstore_pb2.PutResponse(stored=writer.stored, already_present=writer.already,
                                       failed_hashes=writer.failed)

    @rpc(KVSTORE_SERVICE, span=False)
    async def Get(self, request: kvstore_pb2.GetRequest,
                  context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        hashes = self.checks.hashes(list(request.block_hashes))
        span = _tracer.start_span(
            "kvstore.get", context=extract_context(context.invocation_metadata()),
            attributes={"tandem.kv.transport": GRPC if request.inline_payload else LOCAL})
        if request.inline_payload:
            async with contextlib.aclosing(self._get_inline(hashes, request.lease_ms,
                                                            span)) as messages:
                async for message in messages:  # (closed at once when the call is cancelled)
                    yield message
            return
        start = time.perf_counter()
        lease_id, blocks = await self.store.pin_prefix(hashes, request.lease_ms)
        try:
            locations = [self.store.tier_of(b).location(b) for b in blocks]
            if request.batch_locations:
                yield encode_get(kvstore_pb2.GetResponse(lease_id=lease_id, locations=locations))
                return
            for index, location in enumerate(locations):
                yield encode_get(GetChunk(lease_id if index == 0 else "", location))
            if not blocks:
                yield encode_get(GetChunk(lease_id))
        finally:
            span.set_attributes({"tandem.kv.blocks": len(blocks),
                                 "tandem.kv.bytes": sum(b.size for b in blocks),
                                 "tandem.kv.tier": ",".join(sorted({b.tier for b in blocks}))})
            span.end()
            self.store.metrics.get_latency.record(time.perf_counter() - start, {"path": LOCAL})

    async def _get_inline(self, hashes: list[bytes], lease_ms: int,
                          span: Span) -> AsyncGenerator[bytes, None]:
        start = time.perf_counter()
        step = self.settings.chunk_bytes
        read = PinnedRead(self.store, hashes, lease_ms)
        try:
            async with read:
                first = True
                async for block, data in read.payloads():
                    location = self.store.tier_of(block).location(block)
                    for offset in range(0, block.size, step):
                        yield encode_get(GetChunk(
                            read.lease_id if first else "", location if offset == 0 else None,
                            data[offset:offset + step], block.block_hash))
                        first = False
                if first:
                    yield encode_get(GetChunk(read.lease_id))
        finally:
            end_get_span(span, read)
            self.store.metrics.remote_get(time.perf_counter() - start, read.sent, GRPC)


async def _feed(writer: BlockWriter, chunk: PutChunk) -> None:
    """One message of a gRPC Put: the head of a block (its first chunk carries the hash, size
    and checksum) and/or payload bytes."""
    if chunk.block_hash and (chunk.block_hash != writer.hash or not writer.inside):
        await writer.begin(chunk.block_hash, chunk.block_bytes, chunk.checksum,
                           chunk.parent_hash, chunk.tier)
    elif not writer.hash:
        raise invalid("the first chunk of a block must carry its block_hash", "block_hash")
    writer.accept(chunk.data)
    if not writer.inside:
        await writer.complete()


def generic_handler(servicer: KVStoreServicer) -> grpc.GenericRpcHandler:
    def unary(method: object, request: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString,  # type: ignore[attr-defined]
            response_serializer=lambda m: m.SerializeToString())

    return grpc.method_handlers_generic_handler(KVSTORE_SERVICE, {
        "Describe": unary(servicer.Describe, kvstore_pb2.DescribeRequest),
        "Lookup": unary(servicer.Lookup, kvstore_pb2.LookupRequest),
        "Reserve": unary(servicer.Reserve, kvstore_pb2.ReserveRequest),
        "Commit": unary(servicer.Commit, kvstore_pb2.CommitRequest),
        "Release": unary(servicer.Release, kvstore_pb2.ReleaseRequest),
        "Put": grpc.stream_unary_rpc_method_handler(
            servicer.Put, request_deserializer=decode_put,
            response_serializer=lambda m: m.SerializeToString()),
        "Get": grpc.unary_stream_rpc_method_handler(
            servicer.Get, request_deserializer=kvstore_pb2.GetRequest.FromString,
            response_serializer=encode_get),
    })
