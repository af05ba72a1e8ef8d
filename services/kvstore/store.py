"""The KV store's core: two-phase puts, pinned gets, eviction/demotion/promotion, reconcile.

Every metadata transition happens on the event loop (no locks needed: a transition never awaits
between its check and its change) and is written through to Redis before the call that caused it
returns. Payload I/O on files runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

from services.kvstore import reconcile
from services.kvstore.kvmetrics import KVMetrics
from services.kvstore.metadata import Block, Index, ReserveOutcome, State
from services.kvstore.policy import (
    ChildCounter,
    bytes_to_free,
    evictable,
    select_victims,
    should_promote,
)
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.tiers import ArenaTier, FileTier, Tier, verified
from tandem.kvclient.block_format import BlockHeader

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    reserve_timeout_s: float = 30.0
    lease_ms: int = 30_000
    promote_on_hit: bool = True
    verify_on_commit: bool = False
    verify_on_start: bool = True
    maintenance_interval_s: float = 0.2


@dataclasses.dataclass
class Reserved:
    outcome: str  # reserved | already_present | in_progress | no_space
    block: Block | None = None


class KVStore:
    def __init__(self, meta: RedisMeta, tiers: Sequence[Tier], options: StoreOptions) -> None:
        self.meta, self.tiers, self.options = meta, list(tiers), options
        self.rank = {tier.name: i for i, tier in enumerate(self.tiers)}
        self.by_name = {tier.name: tier for tier in self.tiers}
        self.index = Index(self.rank)
        self.metrics = KVMetrics(self.tier_stats, self.index.pinned_count)
        self.epoch = 0
        self._counter = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._promoting: set[bytes] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> reconcile.Plan:
        self.epoch = await self.meta.next_epoch()
        plan = await self.reconcile()
        now = time.time()
        for lease_id, (hashes, ttl_ms) in (await self.meta.live_leases()).items():
            present = [h for h in hashes if self.index.committed(h) is not None]
            self.index.pin(lease_id, present, now + ttl_ms / 1000)
        self._task = asyncio.create_task(self._maintenance())
        return plan

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.meta.close()

    def generation(self) -> int:
        self._counter += 1
        return (self.epoch << 32) | self._counter

    def tier_stats(self) -> list[tuple[str, int, int]]:
        return [(t.name, t.used_bytes(self.index.used[t.name]), len(self.index.lru[t.name]))
                for t in self.tiers]

    def used(self, tier: Tier) -> int:
        return tier.used_bytes(self.index.used[tier.name])

    async def reconcile(self) -> reconcile.Plan:
        blocks, writing, last_access = await self.meta.load()
        headers: dict[tuple[str, int], BlockHeader] = {}
        ok: set[tuple[str, int]] = set()
        files: dict[bytes, reconcile.FileEntry] = {}
        temporaries: list[str] = []
        for tier in self.tiers:
            if isinstance(tier, ArenaTier):
                for slot, found_header in tier.arena.committed_headers().items():
                    headers[(tier.name, slot)] = found_header
                    if found_header.size <= tier.slot_bytes and (
                            not self.options.verify_on_start or tier.arena.verify(
                                slot, found_header.size, found_header.checksum)):
                        ok.add((tier.name, slot))
            elif isinstance(tier, FileTier):
                found, tmp = await asyncio.to_thread(tier.files.scan)
                temporaries += tmp
                for block_hash, (path, header, size) in found.items():
                    files.setdefault(block_hash, reconcile.FileEntry(tier.name, path, header, size))
        plan = reconcile.plan([t.name for t in self.tiers], blocks, writing, headers, ok, files,
                              temporaries, last_access)
        for name, slot in plan.free_slots:
            tier = self.by_name[name]
            assert isinstance(tier, ArenaTier)
            tier.arena.write_header(slot, None)
        for path in plan.delete_paths:
            await asyncio.to_thread(_unlink, path)
        for block in plan.keep:
            tier = self.by_name[block.tier]
            if isinstance(tier, ArenaTier):
                tier.allocator.claim(block.slot)
            self.index.add_committed(block)
        await self.meta.rewrite(plan.keep)
        for block in plan.found:
            self.meta.event(block.tier, "stored", [block.block_hash], block.parent)
        for block_hash, tier_name in plan.lost:
            if tier_name in self.rank:
                self.meta.event(tier_name, "removed", [block_hash])
        if plan.corrupt:
            self.metrics.checksum_failures.add(plan.corrupt, {"tier": "reconcile"})
        log.info("kvstore reconciled", extra={
            "kept": len(plan.keep), "found": len(plan.found), "lost": len(plan.lost),
            "stale_writing": len(plan.stale_writing), "freed_slots": len(plan.free_slots),
            "deleted_files": len(plan.delete_paths), "corrupt": plan.corrupt})
        return plan

    # --- put ----------------------------------------------------------------------------------
    async def reserve(self, hashes: Sequence[bytes], size: int, tier_name: str | None,
                      parent: bytes, record: bool = True) -> list[Reserved]:
        """Reserves space for blocks (first writer wins). ``record=False``: the reservations
        are not written to Redis, for a writer that is this process itself within one call (a
        remote Put): nothing else could act on them, and after a crash the tiers show them as
        never committed (reconcile frees the slot or deletes the temporary)."""
        start = self.rank[tier_name] if tier_name else 0
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
        outcome, expired = self.index.check_reserve(block_hash, time.time())
        if expired is not None:
            await self._release_space(expired)
            self.meta.drop_writing(pipe, block_hash)
        if outcome is not ReserveOutcome.RESERVE:
            return Reserved(outcome.value)
        tier = await self._place(size, start)
        outcome, expired = self.index.check_reserve(block_hash, time.time())  # after the awaits
        if outcome is not ReserveOutcome.RESERVE:
            return Reserved(outcome.value)
        if tier is None or not tier.has_room(size, self.index.used[tier.name]):
            return Reserved("no_space")
        block = Block(block_hash, parent, tier.name, State.WRITING, size, self.generation(),
                      deadline=time.time() + self.options.reserve_timeout_s)
        if not tier.allocate(block):
            return Reserved("no_space")
        self.index.add_writing(block)
        if expired is not None:
            await self._release_space(expired)
        return Reserved("reserved", block)

    async def _place(self, size: int, start: int) -> Tier | None:
        for index in range(start, len(self.tiers)):
            tier = self.tiers[index]
            if not tier.fits(size):
                continue
            used = self.index.used[tier.name]
            if not tier.has_room(size, used):
                need = bytes_to_free(tier.spec, self.used(tier), tier.footprint(size))
                await self._evict(index, max(need, tier.footprint(size)))
            if tier.has_room(size, self.index.used[tier.name]):
                return tier
        return None

    def payload_view(self, block: Block) -> memoryview:
        tier = self.by_name[block.tier]
        assert isinstance(tier, ArenaTier)
        return tier.payload(block)

    async def write_file(self, block: Block, data: bytes | bytearray | memoryview,
                         checksum: int) -> None:
        tier = self.by_name[block.tier]
        assert isinstance(tier, FileTier)
        block.checksum = checksum
        await tier.write_tmp(block, data)

    async def commit(self, items: Sequence[tuple[bytes, int, int]],
                     verify: bool | None = None) -> tuple[list[Block], list[bytes]]:
        """Makes reserved blocks visible: (committed, rejected hashes)."""
        verify = self.options.verify_on_commit if verify is None else verify
        ready: list[Block] = []
        rejected: list[bytes] = []
        for block_hash, generation, crc in items:
            block = self.index.get(block_hash)
            if (block is None or block.state is not State.WRITING
                    or block.generation != generation):
                rejected.append(block_hash)
                continue
            block.checksum = crc
            tier = self.by_name[block.tier]
            good = True
            if isinstance(tier, ArenaTier) and verify:
                good = verified(tier.payload(block), block)
            elif isinstance(tier, FileTier):
                good = await tier.check_tmp(block)
            if not good:
                self.metrics.checksum_failures.add(1, {"tier": block.tier})
                await self.abort(block_hash, generation)
                rejected.append(block_hash)
                continue
            ready.append(block)
        for tier in self.tiers:
            if isinstance(tier, FileTier):
                batch = [b for b in ready if b.tier == tier.name and self.index.get(
                    b.block_hash) is b]
                if batch:
                    await tier.publish(batch)
        committed: list[Block] = []
        pipe = self.meta.pipeline()
        now = time.time()
        for block in ready:
            if self.index.get(block.block_hash) is not block:  # reclaimed while publishing
                rejected.append(block.block_hash)
                continue
            self.index.commit(block.block_hash, block.generation, block.checksum, now)
            tier = self.by_name[block.tier]
            if isinstance(tier, ArenaTier):
                tier.commit_header(block)
            self.metrics.put_bytes.add(block.size, {"tier": block.tier})
            committed.append(block)
        self.meta.save_committed(pipe, committed)
        for tier_name, group, parent in _chains(committed):
            self.meta.event(tier_name, "stored", group, parent)
        await pipe.execute()
        self._wake.set()
        return committed, rejected

    async def abort(self, block_hash: bytes, generation: int) -> None:
        block = self.index.abort(block_hash, generation)
        if block is not None:
            await self._release_space(block)
            pipe = self.meta.pipeline()
            self.meta.drop_writing(pipe, block_hash)
            await pipe.execute()

    async def _release_space(self, block: Block) -> None:
        await self.by_name[block.tier].free(block)

    # --- get ----------------------------------------------------------------------------------
    def lookup(self, hashes: Sequence[bytes]) -> list[str]:
        """Tiers of the leading committed blocks of a chain, from the in-process index.

        The store is the only writer of its metadata and the index changes before the
        write-through to Redis returns, so this answers what a Get would pin (Redis can only
        lag it), without a Redis round trip on the routing path."""
        return [block.tier for block in self.index.prefix(hashes)]

    async def pin_prefix(self, hashes: Sequence[bytes], lease_ms: int) -> tuple[str, list[Block]]:
        blocks = self.index.prefix(hashes)
        lease_ms = lease_ms or self.options.lease_ms
        lease_id = uuid.uuid4().hex
        now = time.time()
        self.index.pin(lease_id, [b.block_hash for b in blocks], now + lease_ms / 1000)
        for block in blocks:
            self.index.touch(block.block_hash, now)
            self.metrics.hits.add(1, {"tier": block.tier})
        if len(blocks) < len(hashes):
            self.metrics.misses.add(len(hashes) - len(blocks))
        pipe = self.meta.pipeline()
        self.meta.save_lease(pipe, lease_id, [b.block_hash for b in blocks], lease_ms)
        self.meta.touch(pipe, blocks)
        await pipe.execute()
        return lease_id, blocks

    async def release(self, lease_id: str, corrupt: Sequence[bytes] = ()) -> int:
        lease = self.index.leases.get(lease_id)
        hashes = self.index.release(lease_id)
        if lease is None:
            return 0
        pipe = self.meta.pipeline()
        self.meta.drop_lease(pipe, lease_id)
        await pipe.execute()
        for block_hash in corrupt:
            block = self.index.committed(block_hash)
            if block is not None and block_hash in hashes and not await self.check(block):
                await self.drop_corrupt(block)
        if self.options.promote_on_hit:
            for block_hash in hashes:
                block = self.index.committed(block_hash)
                if block is not None and self.rank[block.tier] > 0 and \
                        block_hash not in self._promoting:
                    self._promoting.add(block_hash)
                    task = asyncio.create_task(self._promote(block))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        return len(hashes)

    async def read_verified(self, block: Block) -> memoryview | None:
        """The payload of a pinned block, or None (and the block dropped) when it is corrupt."""
        data = await self.by_name[block.tier].read(block)
        if verified(data, block):
            return data
        await self.drop_corrupt(block)
        return None

    async def check(self, block: Block) -> bool:
        return verified(await self.by_name[block.tier].read(block), block)

    async def drop_corrupt(self, block: Block) -> None:
        if self.index.get(block.block_hash) is not block:
            return
        log.warning("dropping corrupt block", extra={"block": block.block_hash.hex(),
                                                     "tier": block.tier})
        self.metrics.checksum_failures.add(1, {"tier": block.tier})
        await self._remove(block, force=True)

    async def _remove(self, block: Block, force: bool = False) -> None:
        if self.index.get(block.block_hash) is not block:
            return
        self.index.remove(block.block_hash, force=force)
        pipe = self.meta.pipeline()
        self.meta.delete(pipe, block)
        self.meta.event(block.tier, "removed", [block.block_hash], block.parent)
        await pipe.execute()
        await self._release_space(block)

    # --- eviction -----------------------------------------------------------------------------
    async def _evict(self, index: int, need: int) -> None:
        tier = self.tiers[index]
        last = index == len(self.tiers) - 1
        victims = select_victims(self.index.lru_order(tier.name), need, last,
                                 ChildCounter(self.index.children), tier.footprint)
        if last:
            for block in victims:
                block.moving = True  # not selected again by a concurrent eviction
            for block in victims:
                block.moving = False
                # re-checked after every await: a reader may have pinned it meanwhile
                if self.index.get(block.block_hash) is block and evictable(block) and \
                        not self.index.has_children(block.block_hash):
                    await self._remove(block)
                    self.metrics.evictions.add(1, {"tier": tier.name})
            return
        for block in victims:
            block.moving = True
        for block in victims:
            try:
                await self._move(block, self.tiers[index + 1], demote=True)
            finally:
                block.moving = False

    async def _move(self, block: Block, dest: Tier, demote: bool) -> bool:
        source = self.by_name[block.tier]
        if not dest.has_room(block.size, self.index.used[dest.name]):
            if not demote:
                return False
            need = bytes_to_free(dest.spec, self.used(dest), dest.footprint(block.size))
            await self._evict(self.rank[dest.name], max(need, dest.footprint(block.size)))
            if not dest.has_room(block.size, self.index.used[dest.name]):
                return False
        data = await source.read(block)
        if not verified(data, block):
            await self.drop_corrupt(block)
            return False
        assert data is not None
        copy = Block(block.block_hash, block.parent, dest.name, State.COMMITTED, block.size,
                     block.generation, checksum=block.checksum)
        if not dest.allocate(copy):
            return False
        await dest.install(copy, data)
        if block.pins or self.index.get(block.block_hash) is not block:
            await dest.free(copy)  # a reader pinned it meanwhile: keep it where it is
            return False
        old = dataclasses.replace(block)
        self.index.move(block.block_hash, dest.name, copy.slot, copy.path, time.time())
        pipe = self.meta.pipeline()
        self.meta.save_committed(pipe, [block], moved_from=old.tier)
        self.meta.event(old.tier, "moved", [block.block_hash], block.parent, dest.name)
        await pipe.execute()
        await source.free(old)
        (self.metrics.demotions if demote else self.metrics.promotions).add(
            1, {"tier": dest.name})
        return True

    async def _promote(self, block: Block) -> None:
        try:
            rank = self.rank[block.tier]
            faster = self.tiers[rank - 1]
            if block.pins or block.moving or not should_promote(
                    rank, faster.spec, self.used(faster), faster.footprint(block.size)):
                return
            block.moving = True
            try:
                await self._move(block, faster, demote=False)
            finally:
                block.moving = False
        except Exception:
            log.exception("promotion failed")
        finally:
            self._promoting.discard(block.block_hash)

    async def _maintenance(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.maintenance_interval_s)
            self._wake.clear()
            try:
                await self.maintain()
            except Exception:
                log.exception("kvstore maintenance failed")

    async def maintain(self) -> None:
        """Reclaims expired reservations and leases; evicts tiers above their high watermark."""
        now = time.time()
        expired = self.index.expired_writing(now)
        if expired:
            pipe = self.meta.pipeline()
            for block in expired:
                await self._release_space(block)
                self.meta.drop_writing(pipe, block.block_hash)
            await pipe.execute()
        for lease_id in self.index.expired_leases(now):
            await self.release(lease_id)
        for index, tier in enumerate(self.tiers):
            used = self.used(tier)
            if used > tier.spec.high_bytes:
                await self._evict(index, used - tier.spec.low_bytes)


def _chains(blocks: Sequence[Block]) -> list[tuple[str, list[bytes], bytes]]:
    """Groups committed blocks into (tier, consecutive chain, parent of its first block)."""
    groups: list[tuple[str, list[bytes], bytes]] = []
    for block in blocks:
        if groups and groups[-1][0] == block.tier and groups[-1][1][-1] == block.parent:
            groups[-1][1].append(block.block_hash)
        else:
            groups.append((block.tier, [block.block_hash], block.parent))
    return groups


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
