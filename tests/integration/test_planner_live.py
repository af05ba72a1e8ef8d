"""The planner live (``make run ARGS="--engine mock --planner"``): the local launcher with mock
workers (the CPU profile's step times) and the planner on the local connector. Streaming load
ramps up: the planner asks for more decode workers and the launcher starts them; the load
falls: the planner drains the surplus (WorkerService.Drain; the launcher frees the slot once
the worker exited). Every stream of the run completes: no request is lost to a scale-down."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client.parser import text_string_to_metric_families

from services.planner.decisions import stream_key
from tandem.discovery import WorkerInfo, index_key, worker_key
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceProcess, wait_ready
from tests.integration.stream_load import StreamLoad

PLANNER = ("--interval-s 1 --startup-s 3 --predictor constant --ttft-target-s 1 "
           "--itl-target-s 0.06 --prefill-min 0 --prefill-max 0 --decode-min 1 --decode-max 3 "
           "--min-lifetime-s 3 --scale-down-delay-s 3")
"""A planner that reacts within seconds: 1 s ticks, the last interval's rate as the forecast,
a worker kept at least 3 s. The CPU profile's decode step is ~55 ms plus ~0.6 ms a sequence:
the ITL target of 60 ms fits ~9 streams a worker (12 streams, ~11 requests a second here:
the planner asks for 3)."""
PHASE_S = 40.0
"""Longest wait for the planner to scale up, or down (each takes 5-17 s here, the machine loaded
3-6x over)."""


def migrations(metrics: str) -> float:
    """Streams the router moved to another worker after theirs was lost."""
    return sum(sample.value for family in text_string_to_metric_families(metrics)
               for sample in family.samples if sample.name == "tandem_router_migrations_total")


async def decode_workers(client: aioredis.Redis, namespace: str) -> dict[str, str]:
    """Registered decode workers and their state (a Redis that does not answer within the
    client's timeout, the machine loaded 10-20x over, is asked again: the phases' own bounds
    end the test)."""
    for _ in range(3):
        try:
            return await _decode_workers(client, namespace)
        except redis.exceptions.TimeoutError:
            continue
    return await _decode_workers(client, namespace)


async def _decode_workers(client: aioredis.Redis, namespace: str) -> dict[str, str]:
    names = sorted(m.decode() for m in await client.smembers(index_key(namespace)))
    raws = await client.mget([worker_key(namespace, n) for n in names]) if names else []
    infos = [WorkerInfo.from_json(raw) for raw in raws if raw is not None]
    return {info.worker_id: info.state for info in infos if info.role == "decode"}


def launch_args(redis_url: str, namespace: str, run_dir: Path, decode_workers: int,
                planner_flags: str, *extra: str) -> list[str]:
    """The launcher's flags: mock workers on the CPU profile, no KV store, no prefill worker,
    ``decode_workers`` to start with, the planner with ``planner_flags``."""
    return ["--engine", "mock", "--mock-profile", "cpu-smollm2-135m", "--kvstore", "false",
            "--prefill-workers", "0", "--decode-workers", str(decode_workers),
            "--redis-url", redis_url, "--namespace", namespace,
            "--http-port", str(free_port()), "--grpc-port", str(free_port()),
            "--run-dir", str(run_dir), "--planner", "true", "--planner-port", str(free_port()),
            "--planner-flags", planner_flags, *extra]


@contextlib.contextmanager
def planner_system(redis_url: str, run_dir: Path, decode_workers: int, planner_flags: str,
                   *extra: str) -> Iterator[tuple[str, str, Callable[[], str]]]:
    """The launcher of ``launch_args`` running, ready: yields its namespace, the router's URL
    and a reader of the launcher's log."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    args = launch_args(redis_url, namespace, run_dir, decode_workers, planner_flags, *extra)
    with ServiceProcess("launch", "tandem.launch", args,
                        log_path=run_dir / "launch.log") as launcher:
        wait_ready([launcher], lambda: (run_dir / "system.json").exists(), 60)
        url = json.loads((run_dir / "system.json").read_text())["router_http_url"]
        yield namespace, url, lambda: (run_dir / "launch.log").read_text()


async def test_the_planner_adds_and_drains_workers_and_no_request_is_lost(
        redis_url: str, tmp_path: Path) -> None:
    client = aioredis.from_url(redis_url, socket_connect_timeout=10, socket_timeout=10)
    with planner_system(redis_url, tmp_path, 1, PLANNER) as (namespace, url, log):
        started = time.monotonic()

        heavy = StreamLoad(url, clients=12, max_tokens=16)  # 12 streams: 2-3 workers
        light = StreamLoad(url, clients=2, max_tokens=16)  # 2 streams: 1 worker
        heavy.start()
        light.start()
        most = 1
        while most < 2:  # ramp up: a second worker serves
            workers = await decode_workers(client, namespace)
            most = max(most, sum(state == "serving" for state in workers.values()))
            assert time.monotonic() - started < PHASE_S, f"no scale-up:\n{log()}"
            await asyncio.sleep(0.2)
        up_s = time.monotonic() - started
        await asyncio.sleep(2.0)  # the new workers take their share of the load
        await heavy.stop()  # ramp down: the light load goes on through the drains
        down = time.monotonic()
        while "drained and left" not in log():
            assert time.monotonic() - down < PHASE_S, f"no scale-down:\n{log()}"
            workers = await decode_workers(client, namespace)  # a third may still come up
            most = max(most, sum(state == "serving" for state in workers.values()))
            await asyncio.sleep(0.2)
        down_s = time.monotonic() - down
        await asyncio.sleep(1.0)  # streams after the drain
        await light.stop()
        workers = await decode_workers(client, namespace)
        decisions = await client.xlen(stream_key(namespace))
        last = json.loads((await client.xrevrange(stream_key(namespace), count=1))[0][1][b"plan"])
        async with httpx.AsyncClient(timeout=10) as http:
            migrated = migrations((await http.get(f"{url}/metrics")).text)

    outcomes = heavy.outcomes + light.outcomes
    failed = heavy.failed() + light.failed()
    print(f"scale-up seen {up_s:.1f} s into the load (most {most} decode workers serving), "
          f"a drained worker left {down_s:.1f} s after the load fell; {len(outcomes)} streams, "
          f"{len(failed)} failed, {migrated:g} migrated; {decisions} decisions; decode workers at "
          f"the end: {workers}; measured start-up {last['plan']['startup_s']:.1f} s")
    assert "draining (WorkerService.Drain" in log()
    kinds = collections.Counter(o.detail[:120] for o in failed)
    assert not failed, (f"{len(failed)} of {len(outcomes)} failed, "
                        f"{[round(o.started - started, 1) for o in failed]} s into the load: "
                        f"{kinds.most_common(3)}")
    assert migrated == 0, "a stream had to move: its worker left before finishing it"
    assert len(light.completed_after(down)) > 0  # served on through the scale-down
    assert len(workers) < most or any(s == "draining" for s in workers.values())
    assert decisions > 0
    startup_s = last["plan"]["startup_s"]
    assert startup_s != 3.0, "the lead time is still the flag's: no start-up measured"
    await client.aclose()
