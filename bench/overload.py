"""Overload: an open-loop Poisson load at twice the measured capacity of a mock fleet, against
the router's admission control.

    python -m bench.overload [--seconds 60] [--load-factor 2]

Topology, as separate processes: a private Redis, two decode workers on the mock engine
(``--decode-ms`` per step, at most ``--max-num-seqs`` requests running each: they announce it
in discovery) and the router, whose admission control gives each worker as many slots as it
runs (``--admission-oversubscription 1``) and sheds past them at once (``--max-queue`` 0; a
queue raises goodput a little, as it fills a slot freed between two arrivals, but a refusal
then waits for its timeout).
Each request is a streamed chat completion of ``--max-tokens`` tokens with a unique prompt.

1. Unloaded: one request at a time for ``--unloaded-seconds``: the TTFT baseline.
2. Capacity: a closed loop with as many clients as the fleet has slots for
   ``--capacity-seconds``: completed requests per second.
3. Overload: Poisson arrivals at ``--load-factor`` x the capacity for ``--seconds``; every
   request is followed to its end.
4. The same arrivals for ``--baseline-seconds`` on a second router of the same fleet whose
   bounds never bite (the engines queue what they cannot run): the TTFT admission control
   saves.

Figures (targets of issue 12): goodput (requests completed per second under overload) ≥ 0.9x
the capacity; admitted requests' TTFT p99 ≤ 2x the unloaded p99; refusals answered within
50 ms p99, each with a Retry-After; decode calls the router made (one per route: its
``tandem_router_prefill_decisions_total``) ≤ 1.1x the client requests. Everything runs on the
same 2 cores (load generator included), so latencies are pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import random
import sys
import time
import urllib.request

import aiohttp
import orjson

from bench.common import Figure, percentile, report
from bench.router_overhead import listeners, spawn, wait_healthy
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.spawn import ServiceProcess, stop_all

MODEL = "SmolLM2-135M-Instruct"
NAMESPACE = "bench-overload"
_JSON = {"content-type": "application/json"}
_numbers = itertools.count()


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    """Until the first token (200), or until the answer (any other status)."""
    ok: bool
    """200 and a complete stream (usage, [DONE], no error event)."""
    retry_after: bool
    """A refusal carried Retry-After."""
    ended_at: float


async def one(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Outcome:
    body = orjson.dumps({
        "model": MODEL, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"Request {next(_numbers)}: tell a story."}],
        "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0})
    started = time.perf_counter()
    async with session.post(url, data=body, headers=_JSON) as reply:
        if reply.status != 200:
            await reply.read()
            now = time.perf_counter()
            return Outcome(reply.status, now - started, False,
                           "retry-after" in reply.headers, now)
        first = 0.0
        usage = error = done = False
        async for line in reply.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: {"):
                if not first and b'"content":"' in line and b'"content":""' not in line:
                    first = time.perf_counter() - started
                usage = usage or b'"usage":{' in line
                error = error or line.startswith(b'data: {"error"')
        return Outcome(200, first, usage and done and not error, False, time.perf_counter())


async def closed_loop(url: str, clients: int, seconds: float, max_tokens: int
                      ) -> list[Outcome]:
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client() -> None:
            while time.perf_counter() < deadline:
                outcomes.append(await one(session, url, max_tokens))

        await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


async def open_loop(url: str, rate: float, seconds: float, max_tokens: int, seed: int
                    ) -> tuple[list[Outcome], float]:
    """Poisson arrivals at ``rate`` per second for ``seconds``; returns every outcome and the
    time from the first arrival to the last answer."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Outcome]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        at = started
        while at - started < seconds:
            at += rng.expovariate(rate)
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, url, max_tokens)))
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - started


def scrape(metrics_url: str) -> tuple[float, dict[float, float]]:
    """From the router's /metrics: the decode calls it made so far (one route each), and its
    own TTFT histogram (cumulative counts by upper bound: from its request driver's start,
    after the HTTP parsing and tokenizing, to the worker's first token)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    calls = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("tandem_router_prefill_decisions_total{"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gen_ai_server_time_to_first_token_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return calls, buckets


def histogram_quantile(before: dict[float, float], after: dict[float, float],
                       fraction: float) -> float:
    """The upper bound of the bucket holding the quantile of what was recorded between two
    scrapes."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    return next((le for le, cumulative in counts if cumulative >= fraction * total),
                float("nan"))


def start_workers(args: argparse.Namespace, redis_url: str) -> list[ServiceProcess]:
    return [spawn("services.decode", [
        "--engine", "mock", "--mock-decode-ms", str(args.decode_ms),
        "--mock-max-num-seqs", str(args.max_num_seqs), "--port", "0",
        "--redis-url", redis_url, "--namespace", NAMESPACE, "--worker-id", f"decode-{i}"])
        for i in range(args.decode_workers)]


def start_router(redis_url: str, admission: list[str]) -> tuple[ServiceProcess, int]:
    """A router on the fleet with the ``--admission-*`` flags ``admission``."""
    http_port = free_port()
    router = spawn("services.router", [
        "--redis-url", redis_url, "--namespace", NAMESPACE, "--http-port", str(http_port),
        "--grpc-port", "0", *admission])
    router.wait_ready(lambda: listeners(http_port) >= 1, 180)
    for _ in range(5):
        wait_healthy(f"http://127.0.0.1:{http_port}/health", router)
    return router, http_port


async def measure(args: argparse.Namespace, http_port: int, unbounded_port: int
                  ) -> tuple[list[Figure], dict[str, object]]:
    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    slots = args.decode_workers * args.max_num_seqs
    await closed_loop(url, 2, 1.0, args.max_tokens)  # warm-up
    print("==> unloaded", file=sys.stderr)
    _, unloaded_before = scrape(metrics_url)
    unloaded = await closed_loop(url, 1, args.unloaded_seconds, args.max_tokens)
    _, unloaded_after = scrape(metrics_url)
    unloaded_p99 = percentile([o.seconds for o in unloaded if o.ok], 0.99)
    print(f"==> capacity: closed loop, {slots} clients", file=sys.stderr)
    started = time.perf_counter()
    closed = await closed_loop(url, slots, args.capacity_seconds, args.max_tokens)
    capacity = sum(o.ok for o in closed) / (time.perf_counter() - started)
    rate = args.load_factor * capacity
    print(f"==> overload: Poisson, {rate:.1f}/s for {args.seconds:g} s", file=sys.stderr)
    routes_before, ttft_before = scrape(metrics_url)
    outcomes, elapsed = await open_loop(url, rate, args.seconds, args.max_tokens, args.seed)
    routes_after, ttft_after = scrape(metrics_url)
    worker_calls = routes_after - routes_before
    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    goodput = sum(o.ok for o in outcomes) / elapsed
    ttft_p99 = percentile([o.seconds for o in admitted], 0.99)
    refusal_p99 = percentile([o.seconds for o in refused], 0.99)
    with_retry_after = sum(o.retry_after for o in refused) / max(1, len(refused))
    calls_ratio = worker_calls / max(1, len(outcomes))
    print(f"==> the same load on a router without bounds, {args.baseline_seconds:g} s",
          file=sys.stderr)
    unbounded, unbounded_elapsed = await open_loop(
        f"http://127.0.0.1:{unbounded_port}/v1/chat/completions", rate, args.baseline_seconds,
        args.max_tokens, args.seed)
    unbounded_p99 = percentile([o.seconds for o in unbounded if o.status == 200], 0.99)
    statuses: dict[str, int] = {}
    for outcome in outcomes:
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
    figures = [
        Figure("capacity (closed loop, completed)", capacity, "req/s"),
        Figure("offered load (Poisson)", len(outcomes) / args.seconds, "req/s", capacity,
               "capacity"),
        Figure("goodput under overload", goodput, "req/s", capacity, "capacity",
               "≥ 0.9x capacity", goodput >= 0.9 * capacity),
        Figure("admitted TTFT p99", ttft_p99 * 1000, "ms", unloaded_p99 * 1000,
               "unloaded p99", "≤ 2x unloaded", ttft_p99 <= 2 * unloaded_p99),
        Figure("refusal answer p99", refusal_p99 * 1000, "ms", target="≤ 50 ms",
               met=refusal_p99 <= 0.05),
        Figure("refusals with Retry-After", with_retry_after, "share", target="1",
               met=with_retry_after == 1.0),
        Figure("worker calls per client request", calls_ratio, "x", target="≤ 1.1",
               met=calls_ratio <= 1.1),
        Figure("admitted requests that failed", sum(not o.ok for o in admitted), "requests"),
        Figure(f"TTFT p99 without bounds ({args.baseline_seconds:g} s)", unbounded_p99 * 1000,
               "ms", ttft_p99 * 1000, "admitted p99"),
    ]
    return figures, {
        "statuses": statuses, "requests": len(outcomes), "admitted": len(admitted),
        "refused": len(refused), "worker_calls": worker_calls,
        "unloaded_ttft_p50_ms": percentile([o.seconds for o in unloaded if o.ok], 0.5) * 1000,
        "admitted_ttft_p50_ms": percentile([o.seconds for o in admitted], 0.5) * 1000,
        "refusal_p50_ms": percentile([o.seconds for o in refused], 0.5) * 1000,
        "overload_elapsed_s": elapsed, "slots": slots,
        "load_average_after_overload": os.getloadavg()[0],
        "router_side_ttft_bucket_ms": {
            "unloaded_p50": histogram_quantile(unloaded_before, unloaded_after, 0.5) * 1000,
            "unloaded_p99": histogram_quantile(unloaded_before, unloaded_after, 0.99) * 1000,
            "admitted_p50": histogram_quantile(ttft_before, ttft_after, 0.5) * 1000,
            "admitted_p99": histogram_quantile(ttft_before, ttft_after, 0.99) * 1000},
        "unbounded": {"requests": len(unbounded),
                      "completed_per_s": sum(o.ok for o in unbounded) / unbounded_elapsed,
                      "ttft_p50_ms": percentile([o.seconds for o in unbounded
                                                 if o.status == 200], 0.5) * 1000,
                      "ttft_p99_ms": unbounded_p99 * 1000}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="overload duration")
    parser.add_argument("--short", action="store_true",
                        help="10 s of overload, 3 s unloaded, 5 s capacity (a quick check)")
    parser.add_argument("--load-factor", type=float, default=2.0)
    parser.add_argument("--unloaded-seconds", type=float, default=8.0)
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--decode-ms", type=float, default=10.0)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=0,
                        help="the router's queue (--admission-max-queue)")
    parser.add_argument("--max-queue-wait-s", type=float, default=0.0,
                        help="--admission-max-queue-wait-s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0,
                        help="the same Poisson load on a second router whose bounds never bite "
                             "(engines queue instead), for comparison")
    args = parser.parse_args(argv)
    if args.short:
        args.seconds, args.unloaded_seconds, args.capacity_seconds = 10.0, 3.0, 5.0
        args.baseline_seconds = 5.0
    redis = PrivateRedis()
    processes: list[ServiceProcess] = []
    try:
        print("==> starting redis, mock decode workers and the router", file=sys.stderr)
        processes = start_workers(args, redis.url)
        router, http_port = start_router(redis.url, [
            "--admission-oversubscription", "1", "--admission-max-queue", str(args.max_queue),
            "--admission-max-queue-wait-s", str(args.max_queue_wait_s)])
        processes.append(router)
        unbounded, unbounded_port = start_router(redis.url, [
            "--admission-oversubscription", "1000", "--admission-max-queue", "100000"])
        processes.append(unbounded)
        figures, extra = asyncio.run(measure(args, http_port, unbounded_port))
        report("overload", figures, {
            "command": f"python -m bench.overload {' '.join(argv or sys.argv[1:])}".strip(),
            "topology": f"{args.decode_workers} mock decode workers ({args.decode_ms:g} ms "
                        f"steps, max {args.max_num_seqs} running each), router with "
                        f"admission control (slots = max_num_seqs, queue {args.max_queue}), "
                        f"{args.max_tokens}-token streams, load generator in this process; "
                        "all on the same 2 cores", **extra})
    finally:
        stop_all(processes, timeout_s=60)
        redis.stop()


if __name__ == "__main__":
    main()
