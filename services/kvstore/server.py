"""gRPC transport of the KV store (validation, framing, spans); the logic is in ``store``.

Put and Get are registered with a copy-avoiding codec of their exact protobuf wire format
(``tandem.kvclient.wire``); the other methods use the generated messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from services.kvstore.metadata import Block
from services.kvstore.settings import KVStoreSettings
from services.kvstore.store import KVStore
from services.kvstore.tiers import ArenaTier
from tandem.errors import TandemError, abort_with, invalid
from tandem.kvclient.wire import HASH_BYTES, Checksum, GetChunk, PutChunk, decode_put, encode_get
from tandem.telemetry import extract_context, tracer
from tandem.v1 import kvstore_pb2

SERVICE = "tandem.v1.KVStoreService"
_tracer = tracer("tandem.kvstore")
_STATUS = {
    "reserved": kvstore_pb2.RESERVE_STATUS_RESERVED,
    "already_present": kvstore_pb2.RESERVE_STATUS_ALREADY_PRESENT,
    "in_progress": kvstore_pb2.RESERVE_STATUS_IN_PROGRESS,
    "no_space": kvstore_pb2.RESERVE_STATUS_NO_SPACE,
}


class KVStoreServicer:
    def __init__(self, store: KVStore, settings: KVStoreSettings, host_id: str) -> None:
        self.store, self.settings, self.host_id = store, settings, host_id
        self.tier_of: dict[int, str] = {int(t.storage): t.name for t in store.tiers}
        self.storage_of = {t.name: t.storage for t in store.tiers}

    # --- validation ---------------------------------------------------------------------------
    def _hashes(self, hashes: list[bytes], param: str = "block_hashes") -> list[bytes]:
        if len(hashes) > self.settings.max_chain_blocks:
            raise invalid(f"at most {self.settings.max_chain_blocks} blocks per request", param)
        for block_hash in hashes:
            if len(block_hash) != HASH_BYTES:
                raise invalid(f"block hashes are {HASH_BYTES} bytes", param)
        return hashes

    def _tier(self, storage: int) -> str | None:
        if storage == 0:
            return None
        if storage not in self.tier_of:
            raise invalid(f"this store has no tier {storage}", "tier")
        return self.tier_of[storage]

    def _size(self, size: int) -> int:
        if not 0 < size <= self.settings.max_block_bytes:
            raise invalid(f"block_bytes must be in (0, {self.settings.max_block_bytes}]",
                          "block_bytes")
        return size

    def _parent(self, parent: bytes) -> bytes:
        if parent and len(parent) != HASH_BYTES:
            raise invalid(f"parent_hash must be empty or {HASH_BYTES} bytes", "parent_hash")
        return parent

    # --- unary methods ------------------------------------------------------------------------
    async def Describe(self, request: kvstore_pb2.DescribeRequest,
                       context: grpc.aio.ServicerContext) -> kvstore_pb2.DescribeResponse:
        tiers = [kvstore_pb2.TierInfo(tier=t.storage, capacity_bytes=t.spec.capacity_bytes,
                                      used_bytes=self.store.used(t), path=t.describe_path())
                 for t in self.store.tiers]
        slot = next((t.slot_bytes for t in self.store.tiers if isinstance(t, ArenaTier)),
                    0)
        return kvstore_pb2.DescribeResponse(host=self.host_id, tiers=tiers, slot_bytes=slot)

    async def Lookup(self, request: kvstore_pb2.LookupRequest,
                     context: grpc.aio.ServicerContext) -> kvstore_pb2.LookupResponse:
        try:
            hashes = self._hashes(list(request.block_hashes))
        except TandemError as error:
            await abort_with(context, error)
        start = time.perf_counter()
        tiers = self.store.lookup(hashes)
        reply = kvstore_pb2.LookupResponse(
            num_prefix_blocks=len(tiers), tiers=[self.storage_of[t] for t in tiers])
        self.store.metrics.lookup_latency.record(time.perf_counter() - start)
        return reply

    async def Reserve(self, request: kvstore_pb2.ReserveRequest,
                      context: grpc.aio.ServicerContext) -> kvstore_pb2.ReserveResponse:
        try:
            hashes = self._hashes(list(request.block_hashes))
            size, tier = self._size(request.block_bytes), self._tier(request.tier)
            parent = self._parent(request.parent_hash)
        except TandemError as error:
            await abort_with(context, error)
        results = await self.store.reserve(hashes, size, tier, parent)
        out = kvstore_pb2.ReserveResponse()
        for result in results:
            reservation = out.reservations.add(status=_STATUS[result.outcome])
            if result.block is not None:
                location = self.store.by_name[result.block.tier].location(result.block)
                reservation.location.CopyFrom(location)
        return out

    async def Commit(self, request: kvstore_pb2.CommitRequest,
                     context: grpc.aio.ServicerContext) -> kvstore_pb2.CommitResponse:
        try:
            self._hashes([b.block_hash for b in request.blocks], "blocks")
        except TandemError as error:
            await abort_with(context, error)
        start = time.perf_counter()
        with _tracer.start_as_current_span(
                "kvstore.commit", context=extract_context(context.invocation_metadata())) as span:
            committed, rejected = await self.store.commit(
                [(b.block_hash, b.generation, b.checksum) for b in request.blocks])
            span.set_attribute("tandem.kv.blocks", len(committed))
            span.set_attribute("tandem.kv.bytes", sum(b.size for b in committed))
            span.set_attribute("tandem.kv.tier", ",".join(sorted({b.tier for b in committed})))
        self.store.metrics.put_latency.record(time.perf_counter() - start, {"path": "local"})
        return kvstore_pb2.CommitResponse(committed=len(committed), rejected_hashes=rejected)

    async def Release(self, request: kvstore_pb2.ReleaseRequest,
                      context: grpc.aio.ServicerContext) -> kvstore_pb2.ReleaseResponse:
        released = await self.store.release(request.lease_id, list(request.corrupt_hashes))
        return kvstore_pb2.ReleaseResponse(released=released)

    # --- streaming methods --------------------------------------------------------------------
    async def Put(self, requests: AsyncIterator[PutChunk],
                  context: grpc.aio.ServicerContext) -> kvstore_pb2.PutResponse:
        start = time.perf_counter()
        with _tracer.start_as_current_span(
                "kvstore.put", context=extract_context(context.invocation_metadata())) as span:
            writer = _BlockWriter(self)
            try:
                async for chunk in requests:
                    await writer.feed(chunk)
                await writer.finish()
            except TandemError as error:
                await writer.close()
                await abort_with(context, error)
            finally:
                await writer.close()
            span.set_attribute("tandem.kv.bytes", writer.bytes)
            span.set_attribute("tandem.kv.blocks", writer.stored)
            span.set_attribute("tandem.kv.tier", ",".join(sorted(writer.tiers)))
        self.store.metrics.put_latency.record(time.perf_counter() - start, {"path": "remote"})
        return kvstore_pb2.PutResponse(stored=writer.stored, already_present=writer.already,
                                       failed_hashes=writer.failed)

    async def Get(self, request: kvstore_pb2.GetRequest,
                  context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            hashes = self._hashes(list(request.block_hashes))
        except TandemError as error:
            await abort_with(context, error)
        start = time.perf_counter()
        span = _tracer.start_span("kvstore.get",
                                  context=extract_context(context.invocation_metadata()))
        lease_id, blocks = await self.store.pin_prefix(hashes, request.lease_ms)
        sent = 0
        try:
            if not request.inline_payload:
                locations = [self.store.by_name[b.tier].location(b) for b in blocks]
                if request.batch_locations:
                    yield encode_get(kvstore_pb2.GetResponse(lease_id=lease_id,
                                                             locations=locations))
                    return
                for index, location in enumerate(locations):
                    yield encode_get(GetChunk(lease_id if index == 0 else "", location))
                if not blocks:
                    yield encode_get(GetChunk(lease_id))
                return
            first = True
            step = self.settings.chunk_bytes
            for block in blocks:
                data = await self.store.read_verified(block)
                if data is None:
                    break
                location = self.store.by_name[block.tier].location(block)
                for offset in range(0, block.size, step):
                    yield encode_get(GetChunk(
                        lease_id if first else "", location if offset == 0 else None,
                        data[offset:offset + step], block.block_hash))
                    first = False
                sent += block.size
                self.store.metrics.get_bytes.add(block.size, {"tier": block.tier})
            if first:
                yield encode_get(GetChunk(lease_id))
        finally:
            if request.inline_payload:
                await self.store.release(lease_id)
            span.set_attribute("tandem.kv.blocks", len(blocks))
            span.set_attribute("tandem.kv.bytes", sent or sum(b.size for b in blocks))
            span.set_attribute("tandem.kv.tier", ",".join(sorted({b.tier for b in blocks})))
            span.end()
            self.store.metrics.get_latency.record(
                time.perf_counter() - start,
                {"path": "remote" if request.inline_payload else "local"})


class _BlockWriter:
    """Receives the chunks of a remote Put, one block at a time, into reserved space.

    A received and verified block is committed (its file written, its metadata written
    through to Redis) while the next block streams in: at most one commit is in flight, and
    the reply waits for the last one."""

    def __init__(self, servicer: KVStoreServicer) -> None:
        self.servicer, self.store = servicer, servicer.store
        self.block: Block | None = None
        self.target: memoryview | None = None
        self.hash = b""
        self.size = self.received = self.expected = 0
        self.stored = self.already = self.bytes = 0
        self.failed: list[bytes] = []
        self.tiers: set[str] = set()
        self.committing: asyncio.Future[None] | None = None
        self.crc = Checksum()

    async def feed(self, chunk: PutChunk) -> None:
        if chunk.block_hash and (chunk.block_hash != self.hash or self.received == self.size):
            if self.hash and self.received != self.size:
                raise invalid("a block's chunks ended before its block_bytes", "data")
            await self._begin(chunk)
        elif not self.hash:
            raise invalid("the first chunk of a block must carry its block_hash", "block_hash")
        data = chunk.data
        if self.received + len(data) > self.size:
            raise invalid("more data than block_bytes", "data")
        if self.target is not None:
            written = self.target[self.received:self.received + len(data)]
            written[:] = data
            self.crc.update(written)  # while the chunk is in the cache: no second pass
        self.received += len(data)
        if self.received == self.size:
            await self._complete()

    async def _begin(self, chunk: PutChunk) -> None:
        servicer = self.servicer
        servicer._hashes([chunk.block_hash], "block_hash")
        self.size = servicer._size(chunk.block_bytes)
        tier, parent = servicer._tier(chunk.tier), servicer._parent(chunk.parent_hash)
        self.hash, self.received, self.expected = chunk.block_hash, 0, chunk.checksum
        self.crc.reset()
        result = (await self.store.reserve([self.hash], self.size, tier, parent,
                                           record=False))[0]
        self.block, self.target = result.block, None
        if result.outcome == "no_space":
            self.failed.append(self.hash)
        elif self.block is None:
            self.already += 1
        elif isinstance(self.store.by_name[self.block.tier], ArenaTier):
            self.target = self.store.payload_view(self.block)
        else:
            self.target = memoryview(bytearray(self.size))  # the block file's contents

    async def _complete(self) -> None:
        block, target = self.block, self.target
        self.block, self.target = None, None
        if block is None or target is None:
            return
        crc = self.crc.intdigest()
        if crc != self.expected:
            self.store.metrics.checksum_failures.add(1, {"tier": block.tier})
            await self.store.abort(block.block_hash, block.generation)
            self.failed.append(block.block_hash)
            return
        await self._settle()
        self.committing = asyncio.ensure_future(self._commit(block, target, crc))

    async def _commit(self, block: Block, target: memoryview, crc: int) -> None:
        if not isinstance(self.store.by_name[block.tier], ArenaTier):
            await self.store.write_file(block, target, crc)
        committed, _ = await self.store.commit([(block.block_hash, block.generation, crc)],
                                               verify=False)
        if committed:
            self.stored += 1
            self.bytes += block.size
            self.tiers.add(block.tier)
        else:
            self.failed.append(block.block_hash)

    async def _settle(self) -> None:
        """Waits for the commit in flight; shielded: a whole, verified block is committed even
        when the stream is cancelled meanwhile."""
        committing, self.committing = self.committing, None
        if committing is not None:
            await asyncio.shield(committing)

    async def finish(self) -> None:
        if self.hash and self.received != self.size:
            raise invalid("the stream ended inside a block", "data")
        await self._settle()

    async def close(self) -> None:
        """Aborts a block left half-written (client gone, bad input)."""
        block, self.block, self.target = self.block, None, None
        if block is not None:
            await self.store.abort(block.block_hash, block.generation)
        with contextlib.suppress(Exception):
            await self._settle()


def generic_handler(servicer: KVStoreServicer) -> grpc.GenericRpcHandler:
    def unary(method: object, request: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request.FromString,  # type: ignore[attr-defined]
            response_serializer=lambda m: m.SerializeToString())

    return grpc.method_handlers_generic_handler(SERVICE, {
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
