"""The store's side of a remote transfer, whatever carries the bytes (a gRPC Put/Get stream or
the data plane): a put received block by block into reserved space, and a get that pins the
leading blocks of a chain and hands out their verified payloads until the first hole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from opentelemetry.trace import Span

from services.kvstore.core.metadata import Block
from services.kvstore.core.validate import Checks
from services.kvstore.store import KVStore
from tandem.errors import invalid
from tandem.kvclient.checksums import Checksum

MAX_READY = 8
"""Received blocks that may wait for their commit before the transfer stops receiving."""


class BlockWriter:
    """Receives the blocks of one remote put, one block at a time, into reserved space.

    A block is reserved when its head arrives (``begin``; not recorded in Redis: only this call
    could act on it, and after a crash the tier shows it never committed), checksummed piece by
    piece as its bytes land, and committed (its file written, its metadata written through to
    Redis) while the next blocks stream in: one commit in flight at a time, for every block
    received meanwhile, and ``finish`` waits for the last one. A payload the store does not need
    (already present, no space) is still received, into nothing."""

    def __init__(self, store: KVStore, checks: Checks) -> None:
        self.store, self.checks = store, checks
        self.block: Block | None = None
        self.target: memoryview | None = None
        self.hash = b""
        self.size = self.received = self.expected = 0
        self.stored = self.already = self.bytes = 0
        self.failed: list[bytes] = []
        self.tiers: set[str] = set()
        self.committing: asyncio.Future[None] | None = None
        self.ready: list[tuple[Block, memoryview, int]] = []
        self.crc = Checksum()

    @property
    def inside(self) -> bool:
        """A block has begun and not all of its bytes arrived."""
        return bool(self.hash) and self.received != self.size

    async def begin(self, block_hash: bytes, size: int, checksum: int, parent: bytes,
                    storage: int) -> memoryview | None:
        """Reserves the next block: where its payload must land (None: receive it into nothing)."""
        if self.inside:
            raise invalid("a block's chunks ended before its block_bytes", "data")
        self.checks.hashes([block_hash], "block_hash")
        size, tier = self.checks.size(size), self.checks.tier(storage)
        parent = self.checks.parent(parent)
        self.hash, self.size, self.received, self.expected = block_hash, size, 0, checksum
        self.crc.reset()
        result = (await self.store.reserve([block_hash], size, tier, parent, record=False))[0]
        self.block, self.target = result.block, None
        if result.outcome == "no_space":
            self.failed.append(block_hash)
        elif self.block is None:
            self.already += 1
        else:
            self.target = self.store.receive_buffer(self.block)
        return self.target

    def accept(self, data: memoryview) -> None:
        """Copies the next bytes of the block into its target (transports that receive into
        buffers of their own)."""
        if self.received + len(data) > self.size:
            raise invalid("more data than block_bytes", "data")
        if self.target is not None and self._live():
            written = self.target[self.received:self.received + len(data)]
            written[:] = data
            self.crc.update(written)  # while the chunk is in the cache: no second pass
        self.received += len(data)

    def landed(self, piece: memoryview) -> None:
        """The next bytes of the block arrived in its target (``piece`` is a view of them)."""
        if self.target is not None and self._live():
            self.crc.update(piece)
        self.received += len(piece)

    def skipped(self, count: int) -> None:
        """The next ``count`` bytes of a block the store does not need were received and
        dropped."""
        self.received += count

    def _live(self) -> bool:
        """The reservation still holds (not reclaimed after ``--reserve-timeout-s``); once it is
        gone the rest of the payload goes nowhere and the block fails."""
        if self.block is not None and self.store.state.holds(self.block):
            return True
        if self.block is not None:
            self.failed.append(self.block.block_hash)
        self.block, self.target = None, None
        return False

    @property
    def deadline(self) -> float | None:
        """Wall-clock time at which the current block's reservation lapses."""
        return self.block.deadline if self.block is not None else None

    async def complete(self, checksum: int | None = None) -> None:
        """The current block's bytes have all arrived: verify (against ``checksum`` when the
        sender gave it after the payload, else the one given to ``begin``), then commit in the
        background."""
        block, target = self.block, self.target
        self.block, self.target = None, None
        if block is None or target is None:
            return
        crc = self.crc.intdigest()
        if crc != (self.expected if checksum is None else checksum):
            self.store.metrics.checksum_failures.add(1, {"tier": block.tier})
            await self.store.abort(block.block_hash, block.generation)
            self.failed.append(block.block_hash)
            return
        self.ready.append((block, target, crc))
        if self.committing is None or self.committing.done():
            if self.committing is not None:
                await self.committing  # (done: raises what it raised)
            self.committing = asyncio.ensure_future(self._commit_ready())
        elif len(self.ready) >= MAX_READY:  # the disk or Redis is behind: stop receiving
            await self._settle()

    async def _commit_ready(self) -> None:
        """Commits the blocks received meanwhile, in order, a batch per write-through: the
        receiving side never waits for Redis unless MAX_READY blocks are waiting."""
        while self.ready:
            batch, self.ready = self.ready, []
            for block, target, crc in batch:
                await self.store.keep_received(block, target, crc)
            committed, rejected = await self.store.commit(
                [(block.block_hash, block.generation, crc) for block, _, crc in batch],
                verify=False)
            self.stored += len(committed)
            self.bytes += sum(block.size for block in committed)
            self.tiers.update(block.tier for block in committed)
            self.failed.extend(rejected)

    async def _settle(self) -> None:
        """Waits until every received block is committed; shielded: a whole, verified block is
        committed even when the transfer is cancelled meanwhile."""
        while self.committing is not None:
            committing = self.committing
            await asyncio.shield(committing)
            if self.committing is committing:
                self.committing = None
                if self.ready:
                    self.committing = asyncio.ensure_future(self._commit_ready())

    async def finish(self) -> None:
        if self.inside:
            raise invalid("the stream ended inside a block", "data")
        await self._settle()

    async def close(self) -> None:
        """Aborts a block left half-written (peer gone, bad input)."""
        block, self.block, self.target = self.block, None, None
        if block is not None:
            await self.store.abort(block.block_hash, block.generation)
        with contextlib.suppress(Exception):
            await self._settle()


class PinnedRead:
    """The leading committed blocks of a chain, pinned for one remote read (``async with``) and
    released when it ends, whatever the transport: a pinned block is never evicted or
    overwritten while its bytes are being sent."""

    def __init__(self, store: KVStore, hashes: Sequence[bytes], lease_ms: int = 0) -> None:
        self.store, self.hashes, self.lease_ms = store, hashes, lease_ms
        self.lease_id = ""
        self.blocks: list[Block] = []
        self.sent = 0

    async def __aenter__(self) -> PinnedRead:
        self.lease_id, self.blocks = await self.store.pin_prefix(self.hashes, self.lease_ms)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.release(self.lease_id)

    async def payloads(self) -> AsyncIterator[tuple[Block, memoryview]]:
        """(block, verified payload) in chain order, ending at the first corrupt block (which
        the store drops): never corrupt bytes. Each yielded block counts as served once the
        caller asks for the next."""
        for block in self.blocks:
            data = await self.store.read_verified(block)
            if data is None:
                return
            yield block, data
            self.sent += block.size
            self.store.metrics.get_bytes.add(block.size, {"tier": block.tier})

    @property
    def tiers(self) -> str:
        return ",".join(sorted({b.tier for b in self.blocks}))


def end_get_span(span: Span, read: PinnedRead) -> None:
    span.set_attributes({"tandem.kv.blocks": len(read.blocks),
                         "tandem.kv.bytes": read.sent, "tandem.kv.tier": read.tiers})
    span.end()
