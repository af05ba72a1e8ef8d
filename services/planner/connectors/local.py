"""The local connector: the planner drives the local launcher (``python -m tandem.launch
--planner``). It writes the counts it wants to the launcher's Redis hash; the launcher's
supervisor starts the missing workers and drains the surplus (``WorkerService.Drain``, then
waits for the worker to exit before its slot is freed): ``tandem.launch_scaling``. The fleet
it reports is the launcher's list of worker processes, each one serving once discovery says
so (registered, past its canary), starting before."""

from __future__ import annotations

import json
from collections.abc import Mapping

import redis.asyncio as aioredis

from services.planner.connectors.base import POOLS, Fleet, Pool, PoolState
from tandem.discovery import WorkerInfo, worker_key
from tandem.launch_scaling import desired_key, workers_key


class LocalConnector:
    """Asks the local launcher for workers; reads its processes and their discovery state."""

    name = "local"

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.applied: int | None = None
        """Sequence of the latest request the launcher applied (None: no report yet)."""

    async def start(self) -> None:
        await self.client.ping()  # type: ignore[misc]

    async def apply(self, desired: Mapping[Pool, int], sequence: int) -> None:
        await self.client.hset(desired_key(self.namespace), mapping={  # type: ignore[misc]
            "sequence": str(sequence), **{pool: str(count) for pool, count in desired.items()}})

    async def observe(self) -> Fleet:
        raw = await self.client.get(workers_key(self.namespace))
        report = json.loads(raw) if raw else {"sequence": None, "workers": {}}
        self.applied = report["sequence"]
        workers: dict[str, dict[str, object]] = report["workers"]
        names = sorted(workers)
        infos = await self.client.mget([worker_key(self.namespace, n) for n in names]) \
            if names else []
        counts = {pool: {"ready": 0, "starting": 0, "draining": 0} for pool in POOLS}
        for name, info in zip(names, infos, strict=True):
            worker = workers[name]
            if worker["draining"]:
                state = "draining"
            elif info is not None and WorkerInfo.from_json(info).state == "serving":
                state = "ready"
            elif info is not None and WorkerInfo.from_json(info).state == "draining":
                state = "draining"  # drained by someone else (SIGTERM): leaving
            else:
                state = "starting"
            counts[worker["role"]][state] += 1  # type: ignore[index]
        return {pool: PoolState(**count) for pool, count in counts.items()}

    async def close(self) -> None:
        pass
