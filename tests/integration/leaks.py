"""What a fault may leave behind, counted so a test or the faults benchmark can compare it
with its baseline: processes of a system (found by its Redis namespace on their command line,
so orphans reparented to init count too), KV-store pins and leases, discovery leases of workers
that are gone, open file descriptors, running requests (scraped from a service's /metrics), and,
in this process, asyncio tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.request
from collections.abc import Collection
from pathlib import Path

import redis

from tandem.discovery import index_key, worker_key


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
