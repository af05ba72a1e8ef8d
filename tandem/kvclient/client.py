"""KV-store client for workers.

On the store's host (same host identity, arena file readable) payloads never ride gRPC: a put
reserves space (Reserve), copies the payload straight into the shared arena (or writes and fsyncs
a block file), then commits (Commit); a get pins the blocks (Get with locations), copies them
out of the arena / block files, verifies their checksums and releases the pins (Release).
Elsewhere payloads travel on the store's data plane (``tandem.kvclient.dataplane``: a raw TCP
transport beside gRPC, received straight into the destination buffers) when the store offers one,
and Lookup does too; gRPC is the fallback: several concurrent streams on separate connections,
1 MiB chunks, encoded without the extra copies of generic protobuf parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import mmap
import os
import socket
from collections.abc import Sequence

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import Span

from tandem.kvclient import dataplane_codec, grpc_remote, wire
from tandem.kvclient.arena_map import open_arena
from tandem.kvclient.blockfile import read_checksummed, write_checksummed
from tandem.kvclient.dataplane import DataPlane, DataPlaneError
from tandem.kvclient.memtune import keep_freed_memory
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.wire import DATAPLANE, GRPC, LOCAL
from tandem.telemetry import inject_metadata, tracer
from tandem.v1 import common_pb2, kvstore_pb2, kvstore_pb2_grpc

MiB = 1 << 20
Buffer = bytes | bytearray | memoryview
_tracer = tracer("tandem.kvclient")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    host: str
    slot_bytes: int
    tiers: list[kvstore_pb2.TierInfo]
    data_port: int = 0
    data_host: str = ""

    def path_of(self, tier: int) -> str | None:
        return next((t.path for t in self.tiers if t.tier == tier), None)


@dataclasses.dataclass
class PutResult:
    stored: int = 0
    already_present: int = 0
    failed: list[bytes] = dataclasses.field(default_factory=list)
    tiers: set[str] = dataclasses.field(default_factory=set)
    """Tiers the new blocks were written to (same-host puts; a remote store picks its own)."""


def tier_name(tier: common_pb2.StorageTier.ValueType | int) -> str:
    """"cxl", "nvme", ... (the names the store uses in its metrics and spans)."""
    name = common_pb2.StorageTier.Name(tier)  # type: ignore[arg-type]
    return name.removeprefix("STORAGE_TIER_").lower()


_OPTIONS = [("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.use_local_subchannel_pool", 1)]


class KVClient:
    def __init__(self, address: str, settings: KVClientSettings | None = None) -> None:
        self.address = address
        self.settings = settings or KVClientSettings()
        self.channels = [grpc.aio.insecure_channel(address, options=_OPTIONS)
                         for _ in range(max(1, self.settings.streams))]
        self.stub = kvstore_pb2_grpc.KVStoreServiceStub(self.channels[0])
        self.info: StoreInfo | None = None
        self.arena: mmap.mmap | None = None
        self.arena_view: memoryview | None = None
        self.same_host = False
        self.data_plane: DataPlane | None = None
        self._pending: set[asyncio.Future[kvstore_pb2.ReleaseResponse]] = set()

    async def __aenter__(self) -> KVClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> StoreInfo:
        keep_freed_memory(self.settings.malloc_keep_bytes)
        reply = await self.stub.Describe(kvstore_pb2.DescribeRequest(),
                                         timeout=self.settings.timeout_s)
        self.info = StoreInfo(reply.host, reply.slot_bytes, list(reply.tiers), reply.data_port,
                              reply.data_host)
        host_id = self.settings.host_id or socket.gethostname()
        same = self.settings.same_host
        if same is None:
            same = reply.host == host_id
        arena_path = self.info.path_of(common_pb2.STORAGE_TIER_CXL)
        if same and arena_path:
            if not os.access(arena_path, os.R_OK | os.W_OK):
                same = False
            else:
                arena, _ = await asyncio.to_thread(open_arena, arena_path,
                                                   self.settings.populate)
                self.arena, self.arena_view = arena, memoryview(arena)
        self.same_host = bool(same)
        if reply.data_port and not self.settings.force_grpc:
            self.data_plane = DataPlane(reply.data_host or _host_of(self.address),
                                        reply.data_port, self.settings.data_connections,
                                        self.settings.timeout_s)
            with contextlib.suppress(DataPlaneError):  # logged; gRPC serves meanwhile
                await self.data_plane.open()
        return self.info

    @property
    def data_plane_up(self) -> bool:
        """Remote payloads and Lookup go over the data plane now."""
        return self._data_plane() is not None

    def _data_plane(self) -> DataPlane | None:
        plane = self.data_plane
        return plane if plane is not None and plane.available else None

    async def close(self) -> None:
        await self.flush()
        if self.data_plane is not None:
            await self.data_plane.close()
        if self.arena_view is not None:
            self.arena_view.release()
            self.arena_view = None
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        for channel in self.channels:
            await channel.close()

    def _meta(self) -> list[tuple[str, str]]:
        return list(inject_metadata())

    # --- metadata -----------------------------------------------------------------------------
    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        plane = self._data_plane()
        if plane is not None:
            try:
                return await plane.lookup(hashes)
            except DataPlaneError as error:
                _fell_back("lookup", error)
        reply = await self.stub.Lookup(kvstore_pb2.LookupRequest(block_hashes=list(hashes)),
                                       timeout=self.settings.timeout_s, metadata=self._meta())
        return reply.num_prefix_blocks, list(reply.tiers)

    # --- put ----------------------------------------------------------------------------------
    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes = b"",
                  tier: int = 0, context: Context | None = None) -> PutResult:
        """Stores a chain of blocks (``parent`` is the block before ``hashes[0]``). The span
        joins ``context`` (default: the current one), e.g. a request's carried trace context."""
        if len(hashes) != len(payloads):
            raise ValueError("one payload per hash")
        size = sum(len(memoryview(p).cast("B")) for p in payloads)
        with _tracer.start_as_current_span("kvclient.put", context=context) as span:
            span.set_attribute("tandem.kv.bytes", size)
            span.set_attribute("tandem.kv.blocks", len(hashes))
            if self.same_host:
                span.set_attribute("tandem.kv.transport", LOCAL)
                result = await self._put_local(hashes, payloads, parent, tier)
            else:
                over_data_plane = await self._put_data_plane(hashes, payloads, parent, tier, span)
                result = over_data_plane or await self._put_remote(hashes, payloads, parent, tier,
                                                                   span)
            # A remote store reports the tiers it chose on its own span (kvstore.put).
            tiers = result.tiers or {tier_name(tier) if tier else "auto"}
            span.set_attributes({"tandem.kv.tier": ",".join(sorted(tiers)),
                                 "tandem.kv.stored_blocks": result.stored,
                                 "tandem.kv.present_blocks": result.already_present,
                                 "tandem.kv.failed_blocks": len(result.failed)})
            return result

    async def _put_local(self, hashes: Sequence[bytes], payloads: Sequence[Buffer],
                         parent: bytes, tier: int) -> PutResult:
        result = PutResult()
        start = 0
        while start < len(hashes):  # one Reserve per run of equally sized blocks
            size = len(memoryview(payloads[start]).cast("B"))
            end = start
            while end < len(hashes) and len(memoryview(payloads[end]).cast("B")) == size:
                end += 1
            await self._put_run(hashes[start:end], payloads[start:end],
                                hashes[start - 1] if start else parent, tier, size, result)
            start = end
        return result

    async def _put_run(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                       tier: int, size: int, result: PutResult) -> None:
        reply = await self.stub.Reserve(
            kvstore_pb2.ReserveRequest(block_hashes=list(hashes), block_bytes=size,
                                       tier=tier, parent_hash=parent),  # type: ignore[arg-type]
            timeout=self.settings.timeout_s, metadata=self._meta())
        pending: list[tuple[bytes, int, asyncio.Future[int] | int]] = []
        for index, (block_hash, reservation) in enumerate(
                zip(hashes, reply.reservations, strict=True)):
            status = reservation.status
            if status in (kvstore_pb2.RESERVE_STATUS_ALREADY_PRESENT,
                          kvstore_pb2.RESERVE_STATUS_IN_PROGRESS):
                result.already_present += 1
                continue
            if status != kvstore_pb2.RESERVE_STATUS_RESERVED:
                result.failed.append(block_hash)
                continue
            location = reservation.location
            result.tiers.add(tier_name(location.tier))
            data = memoryview(payloads[index]).cast("B")
            if location.path:
                previous = hashes[index - 1] if index else parent
                pending.append((block_hash, location.generation, asyncio.ensure_future(
                    asyncio.to_thread(write_checksummed, location.path, location.generation,
                                      block_hash, previous, data, self.settings.direct_io))))
            else:
                pending.append((block_hash, location.generation, wire.copy_checksummed(
                    self._arena()[location.offset:location.offset + size], data)))
        commits = [kvstore_pb2.CommittedBlock(
            block_hash=block_hash, generation=generation,
            checksum=crc if isinstance(crc, int) else await crc)
            for block_hash, generation, crc in pending]
        if commits:
            done = await self.stub.Commit(kvstore_pb2.CommitRequest(blocks=commits),
                                          timeout=self.settings.timeout_s, metadata=self._meta())
            result.stored += done.committed
            result.failed.extend(done.rejected_hashes)

    def _arena(self) -> memoryview:
        if self.arena_view is None:
            raise RuntimeError("the store has no arena mapped in this process")
        return self.arena_view

    async def _put_remote(self, hashes: Sequence[bytes], payloads: Sequence[Buffer],
                          parent: bytes, tier: int, span: Span) -> PutResult:
        span.set_attribute("tandem.kv.transport", GRPC)
        stored, already, failed = await grpc_remote.put(
            self.channels, hashes, payloads, parent, tier, self.settings.chunk_bytes,
            self.settings.timeout_s, self._meta())
        return PutResult(stored, already, failed)

    # --- get ----------------------------------------------------------------------------------
    async def get(self, hashes: Sequence[bytes],
                  into: Sequence[bytearray | memoryview] | None = None,
                  context: Context | None = None) -> list[memoryview]:
        """Payloads of the leading blocks of the chain that the store holds intact, in order
        (shorter than ``hashes`` at the first miss; never a corrupt or partial block). The
        span joins ``context`` (default: the current one)."""
        with _tracer.start_as_current_span("kvclient.get", context=context) as span:
            span.set_attribute("tandem.kv.requested_blocks", len(hashes))
            tiers: set[str] = set()
            if self.same_host:
                span.set_attribute("tandem.kv.transport", LOCAL)
                out = await self._get_local(hashes, into, tiers)
            else:
                got = await self._get_data_plane(hashes, into, tiers, span)
                out = got if got is not None else await self._get_remote(hashes, into, tiers,
                                                                         span)
            span.set_attributes({"tandem.kv.blocks": len(out),
                                 "tandem.kv.bytes": sum(len(b) for b in out),
                                 "tandem.kv.tier": ",".join(sorted(tiers))})
            return out

    async def _get_local(self, hashes: Sequence[bytes],
                         into: Sequence[bytearray | memoryview] | None,
                         tiers: set[str]) -> list[memoryview]:
        call = self.stub.Get(kvstore_pb2.GetRequest(
            block_hashes=list(hashes), inline_payload=False, lease_ms=self.settings.lease_ms,
            batch_locations=True), timeout=self.settings.timeout_s, metadata=self._meta())
        lease_id = ""
        locations: list[kvstore_pb2.BlockLocation] = []
        async for reply in call:  # one message; one per block from a store before batching
            lease_id = lease_id or reply.lease_id
            locations.extend(reply.locations)
            if reply.HasField("location"):
                locations.append(reply.location)
        out: list[memoryview] = []
        corrupt: list[bytes] = []
        try:
            checks: list[tuple[memoryview, int | asyncio.Future[tuple[bool, int]]]] = []
            for index, location in enumerate(locations):
                target = _target(into, index, location.size)
                if location.path:
                    checks.append((target, asyncio.ensure_future(asyncio.to_thread(
                        read_checksummed, location.path, location.block_hash, target))))
                else:
                    view = self._arena()
                    checks.append((target, wire.copy_checksummed(
                        target, view[location.offset:location.offset + location.size])))
            for (target, check), location in zip(checks, locations, strict=True):
                if isinstance(check, int):
                    good, crc = True, check
                else:
                    good, crc = await check
                if not good or crc != location.checksum:
                    corrupt.append(location.block_hash)
                    break
                out.append(target)
                tiers.add(tier_name(location.tier))
        finally:
            if lease_id:  # the copies are taken and verified: release off the critical path
                task = asyncio.ensure_future(self.stub.Release(
                    kvstore_pb2.ReleaseRequest(lease_id=lease_id, corrupt_hashes=corrupt),
                    timeout=self.settings.timeout_s))
                self._pending.add(task)
                task.add_done_callback(self._released)
        return out

    def _released(self, task: asyncio.Future[kvstore_pb2.ReleaseResponse]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # the lease expires on its own

    async def flush(self) -> None:
        """Waits for background releases (pins are dropped once this returns)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _get_data_plane(self, hashes: Sequence[bytes],
                              into: Sequence[bytearray | memoryview] | None, tiers: set[str],
                              span: Span) -> list[memoryview] | None:
        """The blocks over the data plane; None: it cannot serve this call (use gRPC)."""
        plane = self._data_plane()
        if plane is None:
            return None
        try:
            blocks, found = await plane.get(hashes, lambda i, size: _target(into, i, size),
                                            _trace())
        except DataPlaneError as error:
            _fell_back("get", error)
            return None
        span.set_attribute("tandem.kv.transport", DATAPLANE)
        tiers.update(tier_name(t) for t in found)
        return blocks

    async def _put_data_plane(self, hashes: Sequence[bytes], payloads: Sequence[Buffer],
                              parent: bytes, tier: int, span: Span) -> PutResult | None:
        plane = self._data_plane()
        if plane is None:
            return None
        try:
            stored, already, failed = await plane.put(hashes, payloads, parent, tier, _trace())
        except DataPlaneError as error:
            _fell_back("put", error)
            return None
        span.set_attribute("tandem.kv.transport", DATAPLANE)
        return PutResult(stored, already, failed)

    async def _get_remote(self, hashes: Sequence[bytes],
                          into: Sequence[bytearray | memoryview] | None,
                          tiers: set[str], span: Span) -> list[memoryview]:
        span.set_attribute("tandem.kv.transport", GRPC)
        blocks, found = await grpc_remote.get(
            self.channels, hashes, lambda i, size: _target(into, i, size),
            self.settings.timeout_s, self._meta())
        tiers.update(tier_name(t) for t in found)
        return blocks


def _trace() -> bytes:
    """The caller's trace context for a data-plane request."""
    return dataplane_codec.encode_trace(dict(inject_metadata()))


def _fell_back(call: str, error: DataPlaneError) -> None:
    log.info("kv %s over gRPC: %s", call, error)


def _host_of(address: str) -> str:
    """The host of a gRPC target (``host:port``, ``[v6]:port``, ``dns:///host:port``)."""
    host = address.rsplit("/", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") or "127.0.0.1"


def _target(into: Sequence[bytearray | memoryview] | None, index: int, size: int) -> memoryview:
    if into is not None and index < len(into):
        view = memoryview(into[index]).cast("B")
        if len(view) < size:
            raise ValueError(f"buffer {index} holds {len(view)} bytes, the block has {size}")
        return view[:size]
    return memoryview(bytearray(size))
