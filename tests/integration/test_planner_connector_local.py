"""The local connector and the launcher's side of it (``tandem.launch_scaling.WorkerScaler``)
with real Redis: the connector's request makes the launcher start workers; scale-down calls
Drain on the surplus worker (the newest) at the address it registered, keeps it listed as
draining while its process runs, and frees its slot only once it has exited. The fleet the
connector reports follows discovery: a worker serves once registered as serving. (The live
test, test_planner_live.py, runs it with real processes.)"""

from __future__ import annotations

import dataclasses
import signal
import uuid

import redis
import redis.asyncio as aioredis

from services.planner.connectors.local import LocalConnector
from services.planner.core.types import PoolState
from tandem.discovery import WorkerInfo, worker_key
from tandem.launch_scaling import WorkerScaler


@dataclasses.dataclass
class FakeProcess:
    name: str
    running: bool = True
    signals: list[int] = dataclasses.field(default_factory=list)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)


@dataclasses.dataclass
class FakeSupervisor:
    forgotten: list[str] = dataclasses.field(default_factory=list)
    given_up: list[str] = dataclasses.field(default_factory=list)

    def forget(self, name: str) -> None:
        self.forgotten.append(name)
        if name in self.given_up:
            self.given_up.remove(name)


@dataclasses.dataclass
class FakeSystem:
    services: list[FakeProcess] = dataclasses.field(default_factory=list)
    said: list[str] = dataclasses.field(default_factory=list)

    def add_worker(self, role: str, index: int) -> None:
        self.services.append(FakeProcess(f"{role}-{index}"))

    def remove(self, name: str) -> None:
        self.services = [s for s in self.services if s.name != name]

    def say(self, message: str) -> None:
        self.said.append(message)

    def get(self, name: str) -> FakeProcess:
        return next(s for s in self.services if s.name == name)


def register(client: redis.Redis, namespace: str, name: str, state: str = "serving") -> None:
    info = WorkerInfo(name, name.split("-")[0], f"10.0.0.{name[-1]}:5000", "m", "mock", 4096,
                      16, "h", state=state)  # type: ignore[arg-type]
    client.set(worker_key(namespace, name), info.to_json())


async def test_scale_up_then_drain_frees_the_slot_only_after_exit(redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    system = FakeSystem([FakeProcess("decode-0")])
    drained: list[str] = []
    supervisor = FakeSupervisor()
    forgotten = supervisor.forgotten
    sync = redis.Redis.from_url(redis_url)
    scaler = WorkerScaler(system, sync, namespace, supervisor,  # type: ignore[arg-type]
                          drain=drained.append)
    client = aioredis.from_url(redis_url)
    connector = LocalConnector(client, namespace)
    register(sync, namespace, "decode-0")

    scaler.step()  # no request yet: nothing changes
    assert [s.name for s in system.services] == ["decode-0"]
    assert await connector.observe() == {"prefill": PoolState(0), "decode": PoolState(1)}

    await connector.apply({"prefill": 1, "decode": 3}, sequence=1)
    scaler.step()
    assert [s.name for s in system.services] == ["decode-0", "prefill-0", "decode-1", "decode-2"]
    register(sync, namespace, "decode-1")
    register(sync, namespace, "decode-2", state="starting")
    assert await connector.observe() == {"prefill": PoolState(0, starting=1),
                                         "decode": PoolState(2, starting=1)}
    assert connector.applied == 1
    scaler.step()  # applied already: no more workers
    assert len(system.services) == 4

    await connector.apply({"prefill": 1, "decode": 2}, sequence=2)
    scaler.step()
    assert drained == ["10.0.0.2:5000"]  # the newest decode worker, at its address
    assert await connector.observe() == {"prefill": PoolState(0, starting=1),
                                         "decode": PoolState(2, draining=1)}
    scaler.step()  # still running (finishing its requests): still there, drained once
    assert drained == ["10.0.0.2:5000"] and "decode-2" in [s.name for s in system.services]
    assert forgotten == []

    system.get("decode-2").running = False  # it exited
    sync.delete(worker_key(namespace, "decode-2"))
    scaler.step()
    assert forgotten == ["decode-2"]
    assert [s.name for s in system.services] == ["decode-0", "prefill-0", "decode-1"]
    assert await connector.observe() == {"prefill": PoolState(0, starting=1),
                                         "decode": PoolState(2)}

    await connector.apply({"prefill": 0, "decode": 2}, sequence=3)
    scaler.step()  # prefill-0 never registered: drained by SIGTERM
    assert system.get("prefill-0").signals == [signal.SIGTERM]
    await connector.apply({"prefill": 0, "decode": 3}, sequence=4)
    scaler.step()  # a new worker gets a new name, never a drained one's
    assert [s.name for s in system.services][-1] == "decode-3"

    # a worker the supervisor gave up (crash loop) frees its slot: the count starts another
    system.get("decode-3").running = False
    supervisor.given_up.append("decode-3")
    scaler.step()
    assert "decode-3" in forgotten
    assert [s.name for s in system.services][-1] == "decode-4"
    await client.aclose()
    sync.close()
