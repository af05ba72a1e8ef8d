"""The router's CPU per request with API keys and per-key limits on, against the same router
with them off (the baseline, measured in the same run).

    python -m bench.api_keys_overhead [--seconds 4] [--rounds 3] [--concurrency 8]

Topology, as separate processes (``bench.router_overhead``'s): a private Redis, mock decode
workers at 0 ms steps, and two routers on them: one as the local default (keys off), one with
``--api-keys-enabled true`` serving a key with all three limits set (high enough never to
refuse: every request runs the admission script, the refund and a stream lease). The load is
``bench.router_overhead``'s streamed chat completions (unique ~100-token prompts, 32 output
tokens), a closed loop with keep-alive; the two routers take turns, ``--rounds`` windows each,
so a change in the machine's load hits both. CPU per request is the router process's
utime + stime over the window (/proc) divided by the requests served in it. On a loaded
machine those windows are noisy, so the run also measures the front door's own work in this
process (``--micro`` iterations of what the router adds per request: the cached key check,
the admission script's round trip, the settle script's): its CPU time (``time.process_time``,
this process only, not Redis's) per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import redis

from bench.common import Figure, report
from bench.router_overhead import (
    NAMESPACE,
    cpu_seconds,
    listeners,
    request_body,
    spawn,
    wait_healthy,
)
from services.router import keystore
from services.router.core.api_keys import Limits
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.spawn import ServiceProcess, stop_all

LIMITS = Limits(requests_per_minute=10**7, tokens_per_minute=10**9, concurrent_streams=10**4)


async def window(url: str, headers: dict[str, str], concurrency: int, seconds: float,
                 first_number: int) -> tuple[int, float]:
    """(requests served, seconds) of one closed loop."""
    served = 0
    numbers = iter(range(first_number, first_number + 10**7))
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def user() -> None:
            nonlocal served
            while time.perf_counter() < deadline:
                async with session.post(url, data=request_body(next(numbers)),
                                        headers=headers) as reply:
                    if reply.status != 200:
                        raise RuntimeError(f"HTTP {reply.status}: {await reply.text()}")
                    await reply.read()
                served += 1

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return served, time.perf_counter() - started


async def front_door_cpu(redis_url: str, key: str, iterations: int) -> float:
    """This process's CPU per request (ms) for what keys and limits add: authenticate (cached
    after the first), admit (the Lua script), settle (the refund and lease script)."""
    import redis.asyncio as aioredis

    from services.router.access import Access
    from services.router.core.api_keys import ApiKeySettings

    client = aioredis.Redis.from_url(redis_url)
    access = Access(ApiKeySettings(enabled=True), client, NAMESPACE, 4096)
    header = f"Bearer {key}"
    for _ in range(50):  # warm: the cache, the script cache, the connection
        caller = await access.authenticate(header)
        access.limiter.settle(caller.record, await access.admit(caller, 200), 100)
    started = time.process_time()
    for _ in range(iterations):
        caller = await access.authenticate(header)
        lease = await access.admit(caller, 200)
        access.limiter.settle(caller.record, lease, 100)
        await asyncio.sleep(0)  # the settle task runs, as it would between requests
    await asyncio.gather(*access.limiter._settling)
    cpu = time.process_time() - started
    await access.limiter.close()
    await client.aclose()
    return cpu / iterations * 1000


def start_router(redis_url: str, keys: bool) -> tuple[ServiceProcess, int]:
    port = free_port()
    router = spawn("services.router", [
        "--redis-url", redis_url, "--namespace", NAMESPACE, "--http-port", str(port),
        "--grpc-port", "0", "--api-keys-enabled", str(keys).lower()])
    router.wait_ready(lambda: listeners(port) >= 1, 180)
    wait_healthy(f"http://127.0.0.1:{port}/health", router)
    return router, port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per router")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--micro", type=int, default=2000,
                        help="iterations of the in-process front-door measurement")
    args = parser.parse_args(argv)
    server = PrivateRedis()
    processes: list[ServiceProcess] = [spawn("services.decode", [
        "--engine", "mock", "--mock-decode-ms", "0", "--mock-prefill-ms-per-token", "0",
        "--port", "0", "--redis-url", server.url, "--namespace", NAMESPACE,
        "--worker-id", f"decode-{i}"]) for i in range(args.decode_workers)]
    try:
        print("==> starting redis, mock decode workers and two routers", file=sys.stderr)
        admin = redis.Redis.from_url(server.url)
        key = keystore.create(admin, NAMESPACE, "bench", LIMITS)
        admin.close()
        routers = {}
        for keys in (False, True):
            router, port = start_router(server.url, keys)
            processes.append(router)
            headers = {"content-type": "application/json"}
            if keys:
                headers["authorization"] = f"Bearer {key}"
            routers["on" if keys else "off"] = (router, f"http://127.0.0.1:{port}"
                                                f"/v1/chat/completions", headers)
        per_request: dict[str, list[float]] = {"off": [], "on": []}
        rates: dict[str, list[float]] = {"off": [], "on": []}
        number = 0
        for _, url, headers in routers.values():  # warm-up
            asyncio.run(window(url, headers, args.concurrency, 1.0, number))
            number += 10**6
        for round_ in range(args.rounds):
            for name, (router, url, headers) in routers.items():
                before = cpu_seconds(router.pid)
                served, elapsed = asyncio.run(window(url, headers, args.concurrency,
                                                     args.seconds, number))
                number += 10**6
                cpu = cpu_seconds(router.pid) - before
                per_request[name].append(cpu / served * 1000)
                rates[name].append(served / elapsed)
                print(f"round {round_} keys {name:3s}: {served:5d} requests, "
                      f"{served / elapsed:7.1f} req/s, router CPU {cpu / served * 1000:.3f} "
                      "ms/request", file=sys.stderr)
        micro = asyncio.run(front_door_cpu(server.url, key, args.micro))
        off = statistics.median(per_request["off"])
        on = statistics.median(per_request["on"])
        figures = [
            Figure("router CPU per request, keys off", off, "ms", None, "", "baseline"),
            Figure("router CPU per request, keys + limits on", on, "ms", off,
                   "keys off, same run", "within 15% of keys off"),
            Figure("CPU ratio on/off", on / off, "x", 1.0, "keys off", "<= 1.15",
                   on / off <= 1.15),
            Figure("front door's own CPU per request (in process)", micro, "ms", off,
                   "router CPU per request, keys off", "-"),
            Figure("throughput, keys on", statistics.median(rates["on"]), "req/s",
                   statistics.median(rates["off"]), "keys off, same run", "-"),
        ]
        report("api_keys_overhead", figures, {
            "command": "python -m bench.api_keys_overhead", "windows_ms_per_request":
            per_request, "windows_requests_per_s": rates, "concurrency": args.concurrency,
            "seconds": args.seconds})
    finally:
        stop_all(processes, timeout_s=60)
        server.stop()


if __name__ == "__main__":
    main()
