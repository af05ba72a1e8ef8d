"""Reconcile at start: what the tiers hold decides, not Redis (the plan is ``core.reconcile``).

Asks every tier what it holds, plans, then applies the plan: garbage slots and files erased,
kept blocks back in the index and their space claimed, Redis rewritten to match, events for
the blocks that Redis had forgotten or whose payload is gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

from services.kvstore.core.reconcile import Plan, TierContents, plan_for
from services.kvstore.core.state import StoreState
from services.kvstore.kvmetrics import KVMetrics
from services.kvstore.redis_meta import RedisMeta
from services.kvstore.tiers.base import Tier

log = logging.getLogger(__name__)


async def reconcile(state: StoreState, tiers: Sequence[Tier], meta: RedisMeta,
                    metrics: KVMetrics, verify: bool) -> Plan:
    """Rebuilds the state's index from the tiers (``verify``: ``--verify-on-start``)."""
    blocks, writing, last_access = await meta.load()
    contents: dict[str, TierContents] = {}
    for tier in tiers:
        contents[tier.name] = await tier.scan(verify)
    plan = plan_for(contents, blocks, writing, last_access)
    by_name = {tier.name: tier for tier in tiers}
    for tier in tiers:
        slots = [slot for name, slot in plan.free_slots if name == tier.name]
        if slots:
            tier.forget_slots(slots)
    for path in plan.delete_paths:
        await asyncio.to_thread(_unlink, path)
    for block in plan.keep:
        by_name[block.tier].claim(block)
        state.adopt(block)
    await meta.rewrite(plan.keep)
    for block in plan.found:
        meta.event(block.tier, "stored", [block.block_hash], block.parent)
    for block_hash, tier_name in plan.lost:
        if tier_name in state.rank:
            meta.event(tier_name, "removed", [block_hash])
    if plan.corrupt:
        metrics.checksum_failures.add(plan.corrupt, {"tier": "reconcile"})
    log.info("kvstore reconciled", extra={
        "kept": len(plan.keep), "found": len(plan.found), "lost": len(plan.lost),
        "stale_writing": len(plan.stale_writing), "freed_slots": len(plan.free_slots),
        "deleted_files": len(plan.delete_paths), "corrupt": plan.corrupt})
    return plan


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
