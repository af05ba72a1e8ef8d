"""Blocks moving between tiers: eviction (demotion one tier down, dropping from the last
tier) and promotion after a hit. The state machine picks the victims and says whether a move
may complete; this module copies the payloads and writes each move through to Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from services.kvstore.core.metadata import Block
from services.kvstore.core.state import StoreState, verified
from services.kvstore.kvmetrics import KVMetrics
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.tiers.base import Tier

log = logging.getLogger(__name__)

BlockAction = Callable[[Block], Awaitable[None]]


class TierMover:
    def __init__(self, state: StoreState, tiers: Mapping[str, Tier], meta: RedisMeta,
                 metrics: KVMetrics, remove: BlockAction, drop_corrupt: BlockAction) -> None:
        """``remove``: drops a block from the store; ``drop_corrupt``: drops a block whose
        payload failed its checksum."""
        self.state, self.tiers, self.meta, self.metrics = state, tiers, meta, metrics
        self.remove, self.drop_corrupt = remove, drop_corrupt
        self._tasks: set[asyncio.Task[None]] = set()

    def _tier(self, index: int) -> Tier:
        return self.tiers[self.state.tiers[index].name]

    async def evict(self, index: int, need: int) -> None:
        """Frees ``need`` bytes of the tier at ``index``: its least recently used blocks move
        one tier down, or leave the store from the last tier."""
        plan = self.state.eviction_plan(index, need)
        for block in plan.victims:
            block.moving = True  # not selected again by a concurrent eviction
        if plan.dest is None:
            for block in plan.victims:
                block.moving = False
                # asked again after every await: a reader may have pinned it meanwhile
                if self.state.may_drop(block):
                    await self.remove(block)
                    self.metrics.evictions.add(1, {"tier": self.state.tiers[index].name})
            return
        dest = self._tier(plan.dest)
        for block in plan.victims:
            try:
                await self.move(block, dest, demote=True)
            finally:
                block.moving = False

    async def move(self, block: Block, dest: Tier, demote: bool) -> bool:
        """Copies a committed block into ``dest`` and makes the copy the block. A demotion
        evicts from ``dest`` to make room; a promotion never does."""
        source = self.tiers[block.tier]
        need = self.state.room_to_make(dest, block.size)
        if need:
            if not demote:
                return False
            await self.evict(self.state.rank[dest.name], need)
            if not self.state.has_room(dest, block.size):
                return False
        data = await source.read(block)
        if not verified(data, block):
            await self.drop_corrupt(block)
            return False
        assert data is not None
        copy = self.state.place_copy(block, dest)
        if copy is None:
            return False
        dest.prepare(copy)
        await dest.install(copy, data)
        if not self.state.may_complete_move(block):
            await dest.free(copy)  # a reader pinned it meanwhile: keep it where it is
            return False
        old = self.state.complete_move(block, copy, time.time())
        pipe = self.meta.pipeline()
        self.meta.save_committed(pipe, [block], moved_from=old.tier)
        self.meta.event(old.tier, "moved", [block.block_hash], block.parent, dest.name)
        await pipe.execute()
        await source.free(old)
        (self.metrics.demotions if demote else self.metrics.promotions).add(
            1, {"tier": dest.name})
        return True

    def promote_later(self, block: Block) -> None:
        """Promotes a block hit in a lower tier, in the background."""
        task = asyncio.create_task(self.promote(block))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def promote(self, block: Block) -> None:
        try:
            target = self.state.promotion_target(block)
            if target is None:
                return
            block.moving = True
            try:
                await self.move(block, self.tiers[target.name], demote=False)
            finally:
                block.moving = False
        except Exception:
            log.exception("promotion failed")
        finally:
            self.state.promotion_finished(block.block_hash)
