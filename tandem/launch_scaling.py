"""The local launcher's hands for the planner (``--planner``): each supervision round it reads
the worker counts the planner's local connector asked for, starts the workers missing and
drains the surplus, and reports its workers back.

The protocol, in the system's Redis:

- ``<ns>:launcher:desired``: a hash the connector writes: ``sequence`` and one count per pool
  (``prefill``, ``decode``).
- ``<ns>:launcher:workers``: the launcher's report, JSON: ``{"sequence": applied,
  "workers": {name: {"role": ..., "draining": bool}}}``, every worker process it runs.

Scale-down drains: the surplus worker (the newest first) gets ``WorkerService.Drain`` (SIGTERM
when it has not registered yet, which drains the same way); it finishes its requests and exits
cleanly; only then is it forgotten (its slot freed), so the report lists it, draining, until it
has left.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import redis

from tandem.discovery import WorkerInfo, worker_key

if TYPE_CHECKING:
    from tandem.service.groups import GrpcSettings
from tandem.service.spawn import ServiceProcess

log = logging.getLogger(__name__)

POOLS = ("prefill", "decode")
_NAME = re.compile(r"^(prefill|decode)-(\d+)$")


def desired_key(namespace: str) -> str:
    return f"{namespace}:launcher:desired"


def workers_key(namespace: str) -> str:
    return f"{namespace}:launcher:workers"


def parse_desired(fields: Mapping[bytes | str, bytes | str]) -> tuple[int, dict[str, int]] | None:
    """The connector's request from the hash's fields (None before the first)."""
    text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in fields.items()}
    if "sequence" not in text:
        return None
    return int(text["sequence"]), {pool: int(text[pool]) for pool in POOLS if pool in text}


class Watcher(Protocol):
    """What the scaler needs of the launcher's ``Supervisor``."""

    @property
    def given_up(self) -> list[str]: ...

    def forget(self, name: str) -> None: ...


class System(Protocol):
    """What the scaler needs of ``tandem.launch.LocalSystem``."""

    services: list[ServiceProcess]

    def add_worker(self, role: str, index: int) -> None: ...

    def remove(self, name: str) -> None: ...

    def say(self, message: str) -> None: ...


def drain_worker(address: str, timeout_s: float, grpc_settings: GrpcSettings | None = None
                 ) -> None:
    """``WorkerService.Drain`` on the worker at ``address``."""
    from tandem.service.channels import sync_channel
    from tandem.v1 import worker_pb2, worker_pb2_grpc

    with sync_channel(address, grpc_settings) as channel:
        worker_pb2_grpc.WorkerServiceStub(channel).Drain(worker_pb2.DrainRequest(),
                                                         timeout=timeout_s)


@dataclasses.dataclass
class WorkerScaler:
    """Applies the planner's counts to the launcher's worker processes."""

    system: System
    client: redis.Redis
    namespace: str
    supervisor: Watcher
    """Forgets a worker that left; names the workers it gave up (crash loop)."""
    drain: Callable[[str], None] = dataclasses.field(
        default=lambda address: drain_worker(address, 2.0))
    draining: set[str] = dataclasses.field(default_factory=set)
    started: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per role, the next worker index: a new worker never takes a drained one's name (nor
    its log)."""
    failing: bool = False
    """The latest round could not reach Redis (the launcher says so once)."""
    applied: int = 0
    """Sequence of the latest request applied."""

    def workers(self, role: str) -> list[tuple[int, ServiceProcess]]:
        """The role's worker processes (index, process), oldest first."""
        found = []
        for service in self.system.services:
            match = _NAME.match(service.name)
            if match and match.group(1) == role:
                found.append((int(match.group(2)), service))
        return sorted(found, key=lambda item: item[0])

    @classmethod
    def connect(cls, system: System, redis_url: str, namespace: str,
                supervisor: Watcher, grpc_settings: GrpcSettings | None = None) -> WorkerScaler:
        client = redis.Redis.from_url(redis_url, socket_timeout=2.0)
        return cls(system, client, namespace, supervisor,
                   lambda address: drain_worker(address, 2.0, grpc_settings))

    def round(self) -> None:
        """``step``; Redis away (restarting) is tried again next round, and said once."""
        try:
            self.step()
        except redis.RedisError as error:
            if not self.failing:
                self.system.say(f"planner requests unreadable ({error}); retrying")
            self.failing = True
        else:
            self.failing = False

    def step(self) -> None:
        """One round: forgets drained workers that left and workers the supervisor gave up
        (their slot is free: the planner's count starts another), applies the latest request,
        reports."""
        for name in sorted(self.draining):
            service = next((s for s in self.system.services if s.name == name), None)
            if service is None or not service.running:
                self.draining.discard(name)
                self.system.remove(name)
                self.supervisor.forget(name)
                self.system.say(f"{name} drained and left; its slot is free")
        for name in self.supervisor.given_up:
            if _NAME.match(name) and any(s.name == name for s in self.system.services):
                self.draining.discard(name)
                self.system.remove(name)
                self.supervisor.forget(name)
                self.system.say(f"{name} was given up; its slot is free")
        request = parse_desired(self.client.hgetall(desired_key(self.namespace)))  # type: ignore[arg-type]
        if request is not None:
            self.applied, counts = request
            for role, count in counts.items():
                self._scale(role, count)
        self._report()

    def _scale(self, role: str, count: int) -> None:
        workers = self.workers(role)
        active = [(i, s) for i, s in workers if s.name not in self.draining]
        if count > len(active):
            first = max(self.started.get(role, 0), workers[-1][0] + 1 if workers else 0)
            self.started[role] = first + count - len(active)
            for index in range(first, self.started[role]):
                self.system.add_worker(role, index)
        for _, service in reversed(active[count:]):  # the newest go first
            self._drain(service)

    def _drain(self, service: ServiceProcess) -> None:
        self.draining.add(service.name)
        raw = self.client.get(worker_key(self.namespace, service.name))
        try:
            if raw is None:
                raise LookupError("not registered yet")
            self.drain(WorkerInfo.from_json(raw).address)  # type: ignore[arg-type]
            how = "WorkerService.Drain"
        except Exception as error:  # not registered, or its gRPC not up: SIGTERM drains too
            log.info("drain by SIGTERM", extra={"worker": service.name, "why": str(error)})
            service.signal(signal.SIGTERM)
            how = "SIGTERM"
        self.system.say(f"{service.name} draining ({how}; planner request {self.applied})")

    def report(self) -> dict[str, Any]:
        """Every worker process (one awaiting a restart included: it comes back)."""
        workers = {service.name: {"role": match.group(1),
                                  "draining": service.name in self.draining}
                   for service in self.system.services
                   if (match := _NAME.match(service.name))}
        return {"sequence": self.applied, "workers": workers}

    def _report(self) -> None:
        """Written every round: a Redis that restarted empty has it back at once."""
        self.client.set(workers_key(self.namespace), json.dumps(self.report()))
