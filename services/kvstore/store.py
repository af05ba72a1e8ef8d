"""The KV store: two-phase puts, pinned gets, corruption handling; the facade that the
transports call.

Every decision is the state machine's (``core.state``); this module performs what it decided:
payload I/O through the tiers, and the write-through of every metadata transition to Redis
before the call that caused it returns. Transitions happen on the event loop (no locks needed:
a transition never awaits between its check and its change); after each await the state is
asked again, since anything may have changed meanwhile.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from services.kvstore.core.metadata import Block, ReserveOutcome
from services.kvstore.core.reconcile import Plan
from services.kvstore.core.state import Reserved, StoreState, chains, verified
from services.kvstore.kvmetrics import KVMetrics
from services.kvstore.maintenance import MaintenanceLoop
from services.kvstore.movement import TierMover
from services.kvstore.reconciler import reconcile
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.settings import StoreSettings
from services.kvstore.tiers.base import Tier

log = logging.getLogger(__name__)


class KVStore:
    def __init__(self, meta: RedisMeta, tiers: Sequence[Tier], settings: StoreSettings) -> None:
        self.meta, self.tiers, self.settings = meta, list(tiers), settings
        self.by_name = {tier.name: tier for tier in self.tiers}
        self.state = StoreState(self.tiers, settings)
        self.metrics = KVMetrics(self.state.tier_stats, self.state.index.pinned_count)
        self.mover = TierMover(self.state, self.by_name, meta, self.metrics, self._remove,
                               self.drop_corrupt)
        self.maintenance = MaintenanceLoop(self.maintain)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> Plan:
        self.state.epoch = await self.meta.next_epoch()
        plan = await reconcile(self.state, self.tiers, self.meta, self.metrics,
                               self.settings.verify_on_start)
        now = time.time()
        for lease_id, (hashes, ttl_ms) in (await self.meta.live_leases()).items():
            self.state.restore_lease(lease_id, hashes, ttl_ms, now)
        self.maintenance.start()
        return plan

    async def stop(self) -> None:
        await self.maintenance.stop()
        await self.meta.close()

    def tier_of(self, block: Block) -> Tier:
        return self.by_name[block.tier]

    def used(self, tier: Tier) -> int:
        return self.state.used(tier)

    # --- put ----------------------------------------------------------------------------------
    async def reserve(self, hashes: Sequence[bytes], size: int, tier_name: str | None,
                      parent: bytes, record: bool = True) -> list[Reserved]:
        """Reserves space for blocks (first writer wins). ``record=False``: the reservations
        are not written to Redis, for a writer that is this process itself within one call (a
        remote Put): nothing else could act on them, and after a crash the tiers show them as
        never committed (reconcile frees the slot or deletes the temporary)."""
        start = self.state.start_rank(tier_name)
        out: list[Reserved] = []
        pipe = self.meta.pipeline()
        previous = parent
        for block_hash in hashes:
            out.append(await self._reserve_one(block_hash, size, start, previous, pipe))
            previous = block_hash
        if record:
            self.meta.save_writing(pipe, [r.block for r in out if r.block is not None])
        if len(pipe):
            await pipe.execute()
        return out

    async def _reserve_one(self, block_hash: bytes, size: int, start: int, parent: bytes,
                           pipe: Any) -> Reserved:
        outcome, expired = self.state.check_reserve(block_hash, time.time())
        if expired is not None:
            await self._free(expired)
            self.meta.drop_writing(pipe, block_hash)
        if outcome is not ReserveOutcome.RESERVE:
            return Reserved(outcome.value)
        tier = await self._place(size, start)
        reserved, expired = self.state.reserve(block_hash, parent, tier, size, time.time())
        if reserved.block is None:
            return reserved
        self.tier_of(reserved.block).prepare(reserved.block)
        if expired is not None:
            await self._free(expired)
        return reserved

    async def _place(self, size: int, start: int) -> Tier | None:
        """The first tier from ``start`` that the block fits, evicting from it if need be."""
        for index in range(start, len(self.tiers)):
            tier = self.tiers[index]
            if not tier.fits(size):
                continue
            need = self.state.room_to_make(tier, size)
            if need:
                await self.mover.evict(index, need)
            if self.state.has_room(tier, size):
                return tier
        return None

    def receive_buffer(self, block: Block) -> memoryview:
        """Where a remote put receives a reserved block's payload."""
        return self.tier_of(block).receive_buffer(block)

    async def keep_received(self, block: Block, received: memoryview, checksum: int) -> None:
        """The payload received into ``receive_buffer(block)`` becomes the block's."""
        block.checksum = checksum
        await self.tier_of(block).keep_received(block, received)

    async def commit(self, items: Sequence[tuple[bytes, int, int]],
                     verify: bool | None = None) -> tuple[list[Block], list[bytes]]:
        """Makes reserved blocks visible: (committed, rejected hashes)."""
        verify = self.settings.verify_on_commit if verify is None else verify
        ready: list[Block] = []
        rejected: list[bytes] = []
        for block_hash, generation, crc in items:
            block = self.state.pending(block_hash, generation)
            if block is None:
                rejected.append(block_hash)
                continue
            block.checksum = crc
            if not await self.tier_of(block).check_written(block, verify):
                self.metrics.checksum_failures.add(1, {"tier": block.tier})
                await self.abort(block_hash, generation)
                rejected.append(block_hash)
                continue
            ready.append(block)
        for tier in self.tiers:
            batch = [b for b in ready if b.tier == tier.name and self.state.holds(b)]
            if batch:
                await tier.publish(batch)
        committed: list[Block] = []
        pipe = self.meta.pipeline()
        now = time.time()
        for block in ready:
            if not self.state.holds(block):  # reclaimed while publishing
                rejected.append(block.block_hash)
                continue
            self.state.commit(block, now)
            self.tier_of(block).mark_committed(block)
            self.metrics.put_bytes.add(block.size, {"tier": block.tier})
            committed.append(block)
        self.meta.save_committed(pipe, committed)
        for tier_name, group, parent in chains(committed):
            self.meta.event(tier_name, "stored", group, parent)
        await pipe.execute()
        self.maintenance.wake()
        return committed, rejected

    async def abort(self, block_hash: bytes, generation: int) -> None:
        block = self.state.abort(block_hash, generation)
        if block is not None:
            await self._free(block)
            pipe = self.meta.pipeline()
            self.meta.drop_writing(pipe, block_hash)
            await pipe.execute()

    async def _free(self, block: Block) -> None:
        await self.tier_of(block).free(block)

    # --- get ----------------------------------------------------------------------------------
    def lookup(self, hashes: Sequence[bytes]) -> list[str]:
        """Tiers of the leading committed blocks of a chain, from the in-process index.

        The store is the only writer of its metadata and the index changes before the
        write-through to Redis returns, so this answers what a Get would pin (Redis can only
        lag it), without a Redis round trip on the routing path."""
        return self.state.lookup(hashes)

    async def pin_prefix(self, hashes: Sequence[bytes], lease_ms: int) -> tuple[str, list[Block]]:
        pinned = self.state.pin(hashes, uuid.uuid4().hex, lease_ms, time.time())
        for block in pinned.blocks:
            self.metrics.hits.add(1, {"tier": block.tier})
        if pinned.misses:
            self.metrics.misses.add(pinned.misses)
        pipe = self.meta.pipeline()
        self.meta.save_lease(pipe, pinned.lease_id, [b.block_hash for b in pinned.blocks],
                             pinned.lease_ms)
        self.meta.touch(pipe, pinned.blocks)
        await pipe.execute()
        return pinned.lease_id, pinned.blocks

    async def release(self, lease_id: str, corrupt: Sequence[bytes] = ()) -> int:
        hashes = self.state.release(lease_id)
        if hashes is None:
            return 0
        pipe = self.meta.pipeline()
        self.meta.drop_lease(pipe, lease_id)
        await pipe.execute()
        for block_hash in corrupt:
            block = self.state.reported_corrupt(block_hash, hashes)
            if block is not None and not await self.check(block):
                await self.drop_corrupt(block)
        for block in self.state.promotions_after_release(hashes):
            self.mover.promote_later(block)
        return len(hashes)

    async def read_verified(self, block: Block) -> memoryview | None:
        """The payload of a pinned block, or None (and the block dropped) when it is corrupt."""
        data = await self.tier_of(block).read(block)
        if verified(data, block):
            return data
        await self.drop_corrupt(block)
        return None

    async def check(self, block: Block) -> bool:
        return verified(await self.tier_of(block).read(block), block)

    async def drop_corrupt(self, block: Block) -> None:
        if not self.state.holds(block):
            return
        log.warning("dropping corrupt block", extra={"block": block.block_hash.hex(),
                                                     "tier": block.tier})
        self.metrics.checksum_failures.add(1, {"tier": block.tier})
        await self._remove(block, force=True)

    async def _remove(self, block: Block, force: bool = False) -> None:
        if not self.state.remove(block, force):
            return
        pipe = self.meta.pipeline()
        self.meta.delete(pipe, block)
        self.meta.event(block.tier, "removed", [block.block_hash], block.parent)
        await pipe.execute()
        await self._free(block)

    # --- upkeep -------------------------------------------------------------------------------
    async def maintain(self) -> None:
        """Reclaims expired reservations and leases; evicts tiers above their high watermark."""
        now = time.time()
        expired = self.state.expired_reservations(now)
        if expired:
            pipe = self.meta.pipeline()
            for block in expired:
                await self._free(block)
                self.meta.drop_writing(pipe, block.block_hash)
            await pipe.execute()
        for lease_id in self.state.expired_leases(now):
            await self.release(lease_id)
        for index, tier in enumerate(self.tiers):
            excess = self.state.excess(tier)
            if excess:
                await self.mover.evict(index, excess)
