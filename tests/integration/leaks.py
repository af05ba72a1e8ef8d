"""What a fault may leave behind, counted so a test or the faults benchmark can compare it
with its baseline: processes of a system (found by its Redis namespace on their command line,
so orphans reparented to init count too), KV-store pins and leases, discovery leases of workers
that are gone, open file descriptors, running requests (scraped from a service's /metrics), and,
in this process, asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Collection
from pathlib import Path

import prometheus_client
import psutil
import redis

from tandem.discovery import index_key, worker_key
from tests.integration.system import InProcessSystem


def namespace_processes(namespace: str) -> set[int]:
    """The pids of every process with ``--namespace <namespace>`` on its command line."""
    needle = f"--namespace\0{namespace}\0".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


def open_fds(pid: int | None = None) -> int:
    """Open file descriptors of ``pid`` (default: this process)."""
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


REDIS_CONNECTIONS_BOUND = 2
"""Connections to Redis are held against this multiple of their baseline, not the baseline:
after Redis restarts, every client's pool reconnects with as many connections as it has
concurrent users at that moment and keeps them (redis-py's pools never shrink), and an idle
pooled connection to the killed server is only closed when its pool next uses it (seen in the
router: one in CLOSE_WAIT 35 s after the restart). The count moves by one or two (measured in
process: 5 → 7, then 6-7 through six restarts); a leak would grow with every restart."""


def connections_to(port: int, pid: int | None = None) -> int:
    """TCP connections of ``pid`` (default: this process) to ``port``, whatever their state: a
    pooled connection whose server died stays in CLOSE_WAIT until its pool next uses it."""
    return sum(1 for c in psutil.Process(pid).net_connections(kind="inet")
               if c.raddr and c.raddr.port == port)


def scrape(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` at a Prometheus endpoint whose labels include
    ``labels`` (0 when there is none)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if match and all(f'{key}="{value}"' in (match.group(1) or "")
                         for key, value in labels.items()):
            total += float(match.group(2))
    return total


def store_leases(client: redis.Redis, namespace: str) -> int:
    """Reader leases the KV stores of ``namespace`` hold in Redis (each pins blocks)."""
    return sum(1 for _ in client.scan_iter(match=f"{namespace}:kvstore:*:lease:*", count=1000))


def stale_worker_leases(client: redis.Redis, namespace: str, live: Collection[str]) -> int:
    """Discovery leases (or index entries) of workers not in ``live``."""
    members = {m.decode() for m in client.smembers(index_key(namespace))}  # type: ignore[union-attr]
    keys = {bytes(k).decode().rsplit(":", 1)[1]
            for k in client.scan_iter(match=worker_key(namespace, "*"), count=1000)}
    return len((members | keys) - set(live))


def asyncio_tasks() -> int:
    """The asyncio tasks of the running loop, the caller's excluded."""
    return len(asyncio.all_tasks()) - 1


def router_running_requests() -> float:
    """``tandem_router_running_requests`` of the routers in this process."""
    return sum(sample.value for metric in prometheus_client.REGISTRY.collect()
               for sample in metric.samples
               if sample.name == "tandem_router_running_requests")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """What an in-process router (and this process) holds at rest: taken before a fault, then
    ``reached`` waits until the process is back to it (no running request in the router's
    ledger or gauge, no more asyncio tasks or open fds than before).

    Given Redis's URL, connections to Redis are counted apart from the other fds, against
    ``REDIS_CONNECTIONS_BOUND``."""

    fds: int
    tasks: int
    running: float
    redis_port: int | None = None
    redis_connections: int = 0

    @classmethod
    def take(cls, redis_url: str | None = None) -> Baseline:
        port = urllib.parse.urlsplit(redis_url).port if redis_url else None
        redis_connections = connections_to(port) if port else 0
        return cls(open_fds() - redis_connections, asyncio_tasks(), router_running_requests(),
                   port, redis_connections)

    def now(self, system: InProcessSystem) -> dict[str, float]:
        """What is held beyond the baseline now."""
        held = {"ledger": sum(system.router.ledger.requests.values()),
                "running_requests": router_running_requests() - self.running,
                "tasks": asyncio_tasks() - self.tasks, "fds": open_fds() - self.fds}
        if self.redis_port:
            redis_connections = connections_to(self.redis_port)
            held["fds"] -= redis_connections
            held["redis_connections"] = (redis_connections
                                          - REDIS_CONNECTIONS_BOUND * self.redis_connections)
        return held

    async def reached(self, system: InProcessSystem, timeout_s: float = 5.0,
                      ignore: Collection[str] = ()) -> None:
        """Returns once nothing is held beyond the baseline (but what ``ignore`` names); fails
        with what is, after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            held = {key: value for key, value in self.now(system).items() if key not in ignore}
            if not any(value > 0 for value in held.values()):
                return
            assert time.monotonic() < deadline, f"held beyond the baseline: {held}"
            await asyncio.sleep(0.05)
