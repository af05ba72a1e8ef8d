"""The KV client's same-host transport: payloads never ride gRPC. A put reserves space (Reserve),
copies the payload straight into the shared arena (or writes and fsyncs a block file), then
commits (Commit); a get pins the blocks (Get with locations), copies them out of the arena / block
files, verifies their checksums and releases the pins (Release) off the critical path. Lookup
carries no payload: it goes the remote way (the data plane when the store offers one).
"""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Sequence

from tandem.kvclient.blockfile import read_checksummed, write_checksummed
from tandem.kvclient.checksums import copy_checksummed
from tandem.kvclient.settings import KVClientSettings
from tandem.kvclient.transport import (
    LOCAL,
    Buffer,
    PutResult,
    Served,
    Target,
    Transport,
    tier_name,
)
from tandem.telemetry import inject_metadata
from tandem.v1 import kvstore_pb2, kvstore_pb2_grpc


class LocalTransport:
    name = LOCAL

    def __init__(self, stub: kvstore_pb2_grpc.KVStoreServiceStub, arena: mmap.mmap | None,
                 settings: KVClientSettings, remote: Transport) -> None:
        """``arena``: the store's arena mapped here (None: the store has none, block files
        only); ``remote`` serves Lookup."""
        self.stub, self.settings, self.remote = stub, settings, remote
        self.arena = arena
        self.arena_view = memoryview(arena) if arena is not None else None
        self._pending: set[asyncio.Future[kvstore_pb2.ReleaseResponse]] = set()

    async def open(self) -> None:
        await self.remote.open()

    async def lookup(self, hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        return await self.remote.lookup(hashes)

    # --- put ----------------------------------------------------------------------------------
    async def put(self, hashes: Sequence[bytes], payloads: Sequence[Buffer], parent: bytes,
                  tier: int, served: Served) -> PutResult:
        served(LOCAL)
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
            timeout=self.settings.timeout_s, metadata=inject_metadata())
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
                pending.append((block_hash, location.generation, copy_checksummed(
                    self._arena()[location.offset:location.offset + size], data)))
        commits = [kvstore_pb2.CommittedBlock(
            block_hash=block_hash, generation=generation,
            checksum=crc if isinstance(crc, int) else await crc)
            for block_hash, generation, crc in pending]
        if commits:
            done = await self.stub.Commit(kvstore_pb2.CommitRequest(blocks=commits),
                                          timeout=self.settings.timeout_s,
                                          metadata=inject_metadata())
            result.stored += done.committed
            result.failed.extend(done.rejected_hashes)

    def _arena(self) -> memoryview:
        if self.arena_view is None:
            raise RuntimeError("the store has no arena mapped in this process")
        return self.arena_view

    # --- get ----------------------------------------------------------------------------------
    async def get(self, hashes: Sequence[bytes], target: Target,
                  served: Served) -> tuple[list[memoryview], list[int]]:
        served(LOCAL)
        call = self.stub.Get(kvstore_pb2.GetRequest(
            block_hashes=list(hashes), inline_payload=False, lease_ms=self.settings.lease_ms,
            batch_locations=True), timeout=self.settings.timeout_s, metadata=inject_metadata())
        lease_id = ""
        locations: list[kvstore_pb2.BlockLocation] = []
        async for reply in call:  # one message; one per block from a store before batching
            lease_id = lease_id or reply.lease_id
            locations.extend(reply.locations)
            if reply.HasField("location"):
                locations.append(reply.location)
        out: list[memoryview] = []
        tiers: list[int] = []
        corrupt: list[bytes] = []
        try:
            checks: list[tuple[memoryview, int | asyncio.Future[tuple[bool, int]]]] = []
            for index, location in enumerate(locations):
                view = target(index, location.size)
                if location.path:
                    checks.append((view, asyncio.ensure_future(asyncio.to_thread(
                        read_checksummed, location.path, location.block_hash, view))))
                else:
                    arena = self._arena()
                    checks.append((view, copy_checksummed(
                        view, arena[location.offset:location.offset + location.size])))
            for (view, check), location in zip(checks, locations, strict=True):
                if isinstance(check, int):
                    good, crc = True, check
                else:
                    good, crc = await check
                if not good or crc != location.checksum:
                    corrupt.append(location.block_hash)
                    break
                out.append(view)
                tiers.append(location.tier)
        finally:
            if lease_id:  # the copies are taken and verified: release off the critical path
                task = asyncio.ensure_future(self.stub.Release(
                    kvstore_pb2.ReleaseRequest(lease_id=lease_id, corrupt_hashes=corrupt),
                    timeout=self.settings.timeout_s))
                self._pending.add(task)
                task.add_done_callback(self._released)
        return out, tiers

    def _released(self, task: asyncio.Future[kvstore_pb2.ReleaseResponse]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            pass  # the lease expires on its own

    async def flush(self) -> None:
        """Waits for background releases (pins are dropped once this returns)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.remote.flush()

    async def close(self) -> None:
        await self.flush()
        await self.remote.close()
        if self.arena_view is not None:
            self.arena_view.release()
            self.arena_view = None
        if self.arena is not None:
            self.arena.close()
            self.arena = None
