"""What a client sees when a member of the fleet fails: ``make bench-faults`` (``--short``: the
quick version).

One row per fault, each on a fresh local system started by the launcher (``tandem.launch``: real
processes, mock engine, supervision on) under steady closed-loop streaming load
(``tests.integration.stream_load``): decode worker SIGKILL, prefill worker SIGKILL mid-prefill,
KV store SIGKILL (the launcher restarts it), Redis SIGKILL + restart empty and with persistence
(AOF + RDB), worker SIGTERM (drain), a worker that fails every request joining the fleet
(``--mock-fail-rate 1``: the router's circuit breaker takes it out). Columns: requests sent /
completed / failed, streams migrated (the router's ``tandem_router_migrations_total``, resumed),
the longest pause a client saw between two chunks, the time until the fleet routes around the
fault (from the fault to the start of the first request after which every request is answered
with a first token within the TTFT p99 before the fault + 250 ms; and, load-independent, when
the first request sent after the fault got its first token), and what is left afterwards against
the baseline taken after the same load ran once, before the fault: processes of the system (by
namespace, orphans included), pinned KV blocks, leases (store reader leases + discovery leases
of workers that are gone), router fds, running requests. The faulty worker is the busiest of its
role. The baseline pause and TTFT (p99 of the requests before the fault) are measured in the
same run.

Token exactness (``--vllm-trials N``, 10 by default, 0 with ``--short``): with the real
engine at temperature 0, N streams whose decode worker is SIGKILLed mid-stream, each compared
with the undisturbed run (``tests/e2e/exactness.py``); the benchmark holds ``/tmp/vllm.lock``
meanwhile (do not run it under ``flock`` as well).

    python -m bench.faults [--short] [--rows decode_sigkill,redis_empty] [--vllm-trials N]

Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import json
import os
import platform
import signal
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import redis

from bench.common import RESULTS, percentile
from tandem.discovery import WorkerInfo, worker_key
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.spawn import ServiceProcess, http_ok, stop_all
from tests.integration.leaks import (
    REDIS_CONNECTIONS_BOUND,
    connections_to,
    namespace_processes,
    open_fds,
    scrape,
    stale_worker_leases,
    store_leases,
)
from tests.integration.stream_load import Outcome, StreamLoad

PAUSE_MARGIN_S = 0.25
"""The issue's target: the longest pause ≤ the time to re-prefill the request + this."""
ROUTED_AROUND_TARGET_S = 1.0
VLLM_LOCK = "/tmp/vllm.lock"
"""Held while the real engine runs (the machine runs one vLLM system at a time)."""


@dataclasses.dataclass(frozen=True)
class Mode:
    clients: int
    max_tokens: int
    warm_s: float
    after_s: float
    settle_s: float
    """How long leaks may take to go back to the baseline (a SIGKILLed reader's store pins
    lapse with their lease, 30 s by default)."""


SHORT = Mode(clients=6, max_tokens=48, warm_s=4.0, after_s=4.0, settle_s=8.0)
LONG = Mode(clients=8, max_tokens=64, warm_s=8.0, after_s=10.0, settle_s=35.0)


class System:
    """One local system run by the launcher, on a Redis of the benchmark's own (so Redis can be
    killed and restarted, with or without persistence)."""

    def __init__(self, row: Row, run_dir: Path) -> None:
        self.row = row
        self.run_dir = run_dir
        self.namespace = f"faults-{uuid.uuid4().hex[:8]}"
        self.redis = PrivateRedis(run_dir / "redis", persistent=row.persistent_redis)
        self.client = redis.Redis.from_url(self.redis.url)
        args = ["--engine", "mock", "--decode-workers", "2",
                "--prefill-workers", str(row.prefill_workers),
                "--kvstore", "true" if row.kvstore else "false",
                "--disaggregation", row.disaggregation, "--redis-url", self.redis.url,
                "--namespace", self.namespace, "--http-port", str(free_port()),
                "--grpc-port", str(free_port()), "--run-dir", str(run_dir),
                "--restart-backoff-s", "0.2", "--kvstore-cxl-mib", "64",
                "--kvstore-nvme-mib", "64"]
        self.launcher = ServiceProcess("launch", "tandem.launch", args,
                                       log_path=run_dir / "launch.log")
        self.stream_ports: set[int] = set()
        """Every token-stream port a decode worker announced during the row (a killed
        worker's pooled connections count until they close)."""
        self.extras: list[ServiceProcess] = []
        """Processes a fault added (stopped when the load ends)."""

    def start(self) -> None:
        self.launcher.start()
        self.launcher.wait_ready(lambda: (self.run_dir / "system.json").exists(), 120)

    def describe(self) -> dict[str, object]:
        return dict(json.loads((self.run_dir / "system.json").read_text()))

    def pids(self) -> dict[str, int]:
        pids = self.describe()["pids"]
        assert isinstance(pids, dict)
        return {str(name): int(pid) for name, pid in pids.items()}

    @property
    def url(self) -> str:
        return str(self.describe()["router_http_url"])

    def leaks(self) -> dict[str, int]:
        """What the system holds now, to compare with its baseline."""
        pids = self.pids()
        live = set(pids.values()) | {self.launcher.pid}
        urls = self.describe()["metrics_urls"]
        assert isinstance(urls, list)
        store_url = str(urls[0]) if self.row.kvstore else ""
        router_metrics = f"{self.url}/metrics"
        redis_port = urllib.parse.urlsplit(self.redis.url).port
        assert redis_port is not None
        redis_connections = connections_to(redis_port, pids["router"])
        self.stream_ports |= self._stream_ports()
        stream_connections = sum(connections_to(port, pids["router"])
                                 for port in self.stream_ports)
        return {
            "processes": len(namespace_processes(self.namespace) - live),
            "pinned_blocks": int(scrape(store_url, "tandem_kvstore_pinned_blocks"))
            if store_url else 0,
            "leases": store_leases(self.client, self.namespace) + stale_worker_leases(
                self.client, self.namespace,
                [name for name in pids if name.startswith(("decode-", "prefill-"))]),
            "router_fds": open_fds(pids["router"]) - redis_connections - stream_connections,
            "router_redis_connections": redis_connections,
            "router_stream_connections": stream_connections,
            "running_requests": int(scrape(router_metrics, "tandem_router_running_requests")),
        }

    def _stream_ports(self) -> set[int]:
        """The token-stream ports the decode workers announce now."""
        infos = [self.client.get(key) for key in
                 self.client.scan_iter(match=worker_key(self.namespace, "*"))]
        return {info.stream_port for info in
                (WorkerInfo.from_json(raw) for raw in infos if raw)  # type: ignore[arg-type]
                if info.stream_port}

    def busiest(self, role: str) -> str:
        """The worker of ``role`` running the most requests now (the one a fault hurts)."""
        urls = self.describe()["metrics_urls"]
        assert isinstance(urls, list)
        names = [*(f"decode-{i}" for i in range(2)),
                 *(f"prefill-{i}" for i in range(self.row.prefill_workers))]
        offset = 1 if self.row.kvstore else 0  # the store's comes first
        running = {name: scrape(str(urls[offset + index]), "tandem_worker_running_requests")
                   for index, name in enumerate(names) if name.startswith(role)}
        return max(running, key=lambda name: running[name])

    def migrations(self) -> float:
        return scrape(f"{self.url}/metrics", "tandem_router_migrations_total",
                      tandem_outcome="resumed")

    def breakers_opened(self) -> float:
        return scrape(f"{self.url}/metrics", "tandem_router_breaker_transitions_total",
                      tandem_breaker_to="open")

    def stop_extras(self) -> None:
        stop_all(self.extras)
        self.extras.clear()

    def stop(self) -> None:
        self.stop_extras()
        self.launcher.stop()
        self.client.close()
        self.redis.stop()


Fault = Callable[[System], Awaitable[None]]


async def _kill(system: System, role: str) -> None:
    busiest = await asyncio.to_thread(system.busiest, role) if role != "kvstore" else role
    os.kill(system.pids()[busiest], signal.SIGKILL)


async def _sigterm(system: System, role: str) -> None:
    os.kill(system.pids()[await asyncio.to_thread(system.busiest, role)], signal.SIGTERM)


async def _failing_worker(system: System) -> None:
    """A third decode worker joins that passes its canary and health checks but fails every
    request (``--mock-fail-rate 1``)."""
    worker = ServiceProcess("decode-failing", "services.decode", [
        "--redis-url", system.redis.url, "--namespace", system.namespace, "--engine", "mock",
        "--mock-fail-rate", "1", "--worker-id", "decode-failing", "--host", "127.0.0.1",
        "--port", "0"], log_path=system.run_dir / "decode-failing.log")
    system.extras.append(worker.start())
    key = worker_key(system.namespace, "decode-failing")
    await asyncio.to_thread(worker.wait_ready, lambda: bool(system.client.exists(key)), 60)


async def _restart_redis(system: System) -> None:
    system.redis.kill()
    await asyncio.sleep(1.0)  # away for a second
    await asyncio.to_thread(system.redis.restart)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    fault: str
    inject: Fault | None
    prefill_workers: int = 0
    kvstore: bool = False
    disaggregation: str = "never"
    persistent_redis: bool = False
    prompt_repeat: int = 1
    needs: str = ""
    """Why the row cannot run yet (it is listed, not faked)."""


ROWS = [
    Row("decode_sigkill", "decode worker SIGKILL mid-stream",
        lambda s: _kill(s, "decode")),
    Row("prefill_sigkill", "prefill worker SIGKILL mid-prefill",
        lambda s: _kill(s, "prefill"), prefill_workers=2, kvstore=True,
        disaggregation="always", prompt_repeat=40),
    Row("kvstore_sigkill", "KV store SIGKILL (restarted by the launcher)",
        lambda s: _kill(s, "kvstore"), prefill_workers=1, kvstore=True,
        disaggregation="always", prompt_repeat=40),
    Row("redis_empty", "Redis SIGKILL + restart, empty", _restart_redis),
    Row("redis_persistent", "Redis SIGKILL + restart, AOF + RDB on", _restart_redis,
        persistent_redis=True),
    Row("drain_sigterm", "decode worker SIGTERM (drain)", lambda s: _sigterm(s, "decode")),
    Row("failing_worker", "a worker that fails every request (joins)", _failing_worker),
]


def routed_around(outcomes: list[Outcome], fault_at: float, ttft_limit: float) -> float | None:
    """Seconds from the fault to the start of the first request after which every request
    (started after the fault) was answered, its first token within ``ttft_limit``."""
    after = sorted((o for o in outcomes if o.started >= fault_at), key=lambda o: o.started)
    bad = [i for i, o in enumerate(after)
           if not o.ok or o.first_at is None or o.first_at - o.started > ttft_limit]
    if not after or (bad and bad[-1] == len(after) - 1):
        return None  # never recovered while watched
    return (after[bad[-1] + 1].started if bad else fault_at) - fault_at


STREAM_CONNECTIONS_BOUND = 2
"""The router keeps a token-stream connection per call a decode worker ran at once, idle
between calls (the pool), so their count follows the load's concurrency per worker, not time:
after a worker restarts, the other one's pool has grown with the streams it took over and the
new one's refills as load returns (measured: +4 over a baseline of ~8 with 8 clients and 2
decode workers, still there 35 s later). Twice the baseline is what 2 workers can hold; a
leak would grow with every fault."""

ALLOWED_GROWTH = {"router_redis_connections": REDIS_CONNECTIONS_BOUND,
                  "router_stream_connections": STREAM_CONNECTIONS_BOUND}
"""Leaks held against a multiple of their baseline rather than the baseline itself."""


async def settle(system: System, baseline: dict[str, int], settle_s: float
                 ) -> tuple[dict[str, int], float]:
    """The leaks once they are back at the baseline (or what is left after ``settle_s``),
    and how long that took."""
    started = time.monotonic()
    while True:
        now = await asyncio.to_thread(system.leaks)
        left = {key: max(0, now[key] - ALLOWED_GROWTH.get(key, 1) * baseline[key])
                for key in now}
        elapsed = time.monotonic() - started
        if not any(left.values()) or elapsed > settle_s:
            return left, elapsed
        await asyncio.sleep(0.5)


async def run_row(row: Row, mode: Mode, run_dir: Path) -> dict[str, object]:
    system = System(row, run_dir)
    await asyncio.to_thread(system.start)
    try:
        url = system.url
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:  # warm-up
            await client.get("/health")
        # the baseline: after the same load (every channel and pooled connection it needs)
        warm = StreamLoad(url, clients=mode.clients, max_tokens=mode.max_tokens,
                          prompt_repeat=row.prompt_repeat)
        warm.start()
        await warm.served(mode.clients, timeout_s=120)
        await warm.stop()
        baseline = await asyncio.to_thread(system.leaks)

        load = StreamLoad(url, clients=mode.clients, max_tokens=mode.max_tokens,
                          prompt_repeat=row.prompt_repeat)
        load.start()
        await asyncio.sleep(mode.warm_s)
        migrated_before = await asyncio.to_thread(system.migrations)
        opened_before = await asyncio.to_thread(system.breakers_opened)
        fault_at = time.monotonic()
        assert row.inject is not None
        await row.inject(system)
        await asyncio.sleep(mode.after_s)
        await load.stop()
        await asyncio.to_thread(system.stop_extras)
        await asyncio.to_thread(
            system.launcher.wait_ready, lambda: http_ok(f"{system.url}/health"), 30)
        migrated = await asyncio.to_thread(system.migrations) - migrated_before
        opened = await asyncio.to_thread(system.breakers_opened) - opened_before
        left, settled_s = await settle(system, baseline, mode.settle_s)
    finally:
        await asyncio.to_thread(system.stop)

    before = [o for o in load.outcomes if o.ok and o.ended < fault_at]
    ttft_p99 = percentile([o.first_at - o.started for o in load.outcomes
                           if o.first_at is not None and o.first_at < fault_at], 0.99)
    pause_p99 = percentile([o.longest_gap for o in before], 0.99)
    touched = [o for o in load.outcomes if o.ended >= fault_at]
    longest_pause = max((o.longest_gap for o in touched), default=0.0)
    around = routed_around(load.outcomes, fault_at, ttft_p99 + PAUSE_MARGIN_S)
    first_answer = min((o.first_at for o in load.outcomes if o.ok and o.first_at is not None
                        and o.started >= fault_at), default=None)
    failed = load.failed()
    return {
        "row": row.name, "fault": row.fault, "sent": len(load.outcomes),
        "completed": len(load.outcomes) - len(failed), "failed": len(failed),
        "failures": sorted({o.detail[:160] for o in failed})[:5],
        "migrated": int(migrated), "breakers_opened": int(opened),
        "longest_pause_s": round(longest_pause, 4),
        "baseline_pause_p99_s": round(pause_p99, 4), "ttft_p99_s": round(ttft_p99, 4),
        "routed_around_s": None if around is None else round(around, 4),
        "first_answer_after_s": None if first_answer is None
        else round(first_answer - fault_at, 4),
        "leaks": left, "leaks_baseline": baseline, "settled_s": round(settled_s, 2),
        "targets": {
            "lost_0": not failed,
            "pause": longest_pause <= ttft_p99 + PAUSE_MARGIN_S,
            "routed_around_1s": around is not None and around <= ROUTED_AROUND_TARGET_S,
            "leaks_0": not any(left.values()),
        },
    }


async def exactness_trials(count: int) -> dict[str, object]:
    from tests.e2e.exactness import VllmFleet, trials

    print(f"==> migration exactness: {count} trials with the real engine (waiting for "
          f"{VLLM_LOCK})", flush=True)
    lock = await asyncio.to_thread(open, VLLM_LOCK, "a")
    with lock, tempfile.TemporaryDirectory(prefix="faults-exactness-") as run_dir:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        fleet = VllmFleet(Path(run_dir))
        try:
            await asyncio.to_thread(fleet.start)
            done = await trials(fleet, count)
        finally:
            await asyncio.to_thread(fleet.stop)
    return {"trials": len(done), "exact": sum(one.exact for one in done),
            "differing": [dataclasses.asdict(one) for one in done if not one.exact]}


def _ms(seconds: object) -> str:
    return "-" if seconds is None else f"{float(seconds) * 1000:.0f}"  # type: ignore[arg-type]


def print_table(results: list[dict[str, object]]) -> None:
    print(f"\n{'fault':44s} {'sent':>5s} {'ok':>5s} {'fail':>5s} {'migr':>5s} "
          f"{'pause ms':>9s} {'(base)':>7s} {'ttft99':>7s} {'around ms':>10s} {'1st ms':>7s} "
          f"{'leaks p/b/l/fd/redis/stream/run':>31s}")
    for r in results:
        if "needs" in r:
            print(f"{r['fault']:44s} {r['needs']}")
            continue
        leaks = r["leaks"]
        assert isinstance(leaks, dict)
        around = r["routed_around_s"]
        print(f"{r['fault']:44s} {r['sent']:5d} {r['completed']:5d} {r['failed']:5d} "
              f"{r['migrated']:5d} {float(r['longest_pause_s']) * 1000:9.0f} "  # type: ignore[arg-type]
              f"{float(r['baseline_pause_p99_s']) * 1000:7.0f} "  # type: ignore[arg-type]
              f"{float(r['ttft_p99_s']) * 1000:7.0f} "  # type: ignore[arg-type]
              f"{'never' if around is None else f'{float(around) * 1000:.0f}':>10s} "  # type: ignore[arg-type]
              f"{_ms(r['first_answer_after_s']):>7s} "
              f"{'/'.join(str(v) for v in leaks.values()):>31s}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the quick version")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--vllm-trials", type=int, default=None,
                        help="migration exactness trials with the real engine (default 10; "
                             "0 with --short)")
    parser.add_argument("--only-exactness", action="store_true",
                        help="run the exactness trials alone and update their entry in "
                             "bench/results/faults.json (the fault rows are kept)")
    args = parser.parse_args()
    if args.only_exactness:
        path = RESULTS / "faults.json"
        payload = json.loads(path.read_text())
        payload["exactness"] = await exactness_trials(args.vllm_trials or 10)
        payload["exactness_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(json.dumps({k: v for k, v in payload["exactness"].items() if k != "differing"}))
        return
    vllm_trials = args.vllm_trials if args.vllm_trials is not None else (
        0 if args.short else 10)
    mode = SHORT if args.short else LONG
    chosen = [r for r in ROWS if not args.rows or r.name in args.rows.split(",")]
    results: list[dict[str, object]] = []
    for row in chosen:
        if row.needs:
            results.append({"row": row.name, "fault": row.fault, "needs": row.needs})
            continue
        print(f"==> {row.fault}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"faults-{row.name}-") as run_dir:
            results.append(await run_row(row, mode, Path(run_dir)))
    exactness = await exactness_trials(vllm_trials) if vllm_trials else None
    print_table(results)
    if exactness is not None:
        print(f"\nmigration exactness (vLLM, temperature 0): {exactness['exact']} of "
              f"{exactness['trials']} migrated streams equal the undisturbed run "
              f"(target ≥ 9 of 10)")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "faults.json"
    mode_name = "short" if args.short else "long"
    if args.rows and path.exists():  # some rows: the others are kept from the last run
        previous = json.loads(path.read_text())
        if previous.get("mode") == mode_name:
            ran = {str(r["row"]) for r in results}
            results = [*(r for r in previous["rows"] if r["row"] not in ran), *results]
            results.sort(key=lambda r: [row.name for row in ROWS].index(str(r["row"])))
            exactness = exactness or previous.get("exactness")
    payload = {"benchmark": "faults", "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "mode": "short" if args.short else "long", "settings": dataclasses.asdict(mode),
               "machine": platform.machine(), "cpus": os.cpu_count(), "rows": results,
               "exactness": exactness}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
