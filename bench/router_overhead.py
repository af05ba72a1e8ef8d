"""Router overhead and capacity, with workers that cost (almost) nothing.

    python -m bench.router_overhead [--seconds 4] [--concurrency 1,8,32,128]

Topology, as separate processes: a private Redis, decode workers on the mock engine at
effectively infinite speed (0 ms steps), and the router. Each request is a streamed chat
completion of a ~100-token prompt with 32 output tokens. For every concurrency and connection
mode (keep-alive, or a new connection per request) a closed loop runs for ``--seconds``;
CPU comes from /proc/<pid>/stat. Same-run baselines: the same token stream requested straight
from the decode workers over gRPC (no router, no HTTP): TTFT at concurrency 1, throughput at
the top concurrency; and the decode workers' own CPU per request (they send the same
per-token gRPC messages the router reads).

Targets (issue 5; a leading Rust frontend measured on this machine kind): TTFT p50 ≤ 5 ms at
concurrency 1 with a new connection per request and ≤ 9 ms with keep-alive, ≤ 1 ms of router
CPU per request under load, ≥ 600 requests/s with 32-token streams. The load generator runs
on the same 2 cores as the router and the workers, so every figure here is pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import redis.asyncio as aioredis

from bench.common import Figure, percentile, report
from tandem.discovery import WorkerWatcher
from tandem.redis_local import PrivateRedis, free_port
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
NAMESPACE = "bench-router"
OUTPUT_TOKENS = 32
PROMPT = ("You are a concise assistant. Answer in one sentence. " * 8).strip()
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def spawn(module: str, args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args, "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def wait_healthy(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy")


async def one_request(session: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """(time to first token, total time, tokens) of one streamed chat completion."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "temperature": 0}
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with session.post(url, json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {await reply.text()}")
        async for line in reply.content:
            if line.startswith(b"data: {") and b'"content":"' in line and \
                    b'"content":""' not in line:
                tokens += 1
                if not first:
                    first = time.perf_counter() - started
    return first, time.perf_counter() - started, tokens


async def closed_loop(url: str, concurrency: int, seconds: float, keep_alive: bool
                      ) -> tuple[list[float], int, int, float]:
    connector = aiohttp.TCPConnector(limit=0, force_close=not keep_alive)
    ttfts: list[float] = []
    counts = [0, 0]  # requests, tokens
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=connector) as session:
        async def user() -> None:
            while time.perf_counter() < deadline:
                first, _, tokens = await one_request(session, url)
                ttfts.append(first)
                counts[0] += 1
                counts[1] += tokens

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return ttfts, counts[0], counts[1], elapsed


async def direct_baseline(redis_url: str, prompt_tokens: list[int], concurrency: int,
                          seconds: float) -> tuple[list[float], float]:
    """The same generation asked straight from the decode workers over gRPC (no router, no
    HTTP): TTFTs and requests per second of a closed loop at ``concurrency``."""
    client = aioredis.Redis.from_url(redis_url)
    workers = list((await WorkerWatcher(client, NAMESPACE).refresh()).values())
    await client.aclose()
    channels = [grpc.aio.insecure_channel(w.address) for w in workers]
    stubs = [worker_pb2_grpc.DecodeServiceStub(channel) for channel in channels]
    ttfts: list[float] = []
    deadline = time.perf_counter() + seconds

    async def user(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while time.perf_counter() < deadline:
            request = worker_pb2.GenerateRequest(
                request_id=f"direct-{index}-{len(ttfts)}", prompt_token_ids=prompt_tokens,
                model=MODEL, sampling=common_pb2.SamplingParams(
                    max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True))
            started = time.perf_counter()
            first = 0.0
            async for _ in stub.Generate(request):
                if not first:
                    first = time.perf_counter() - started
            ttfts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(concurrency)))
    requests_per_s = len(ttfts) / (time.perf_counter() - started)
    for channel in channels:
        await channel.close()
    return ttfts, requests_per_s


async def run(args: argparse.Namespace, router_pid: int, worker_pids: list[int],
              http_port: int, redis_url: str) -> tuple[list[Figure], list[dict[str, object]]]:
    url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
    from services.router.prompts import PromptBuilder
    from tandem.model import default_model_dir

    prompt_tokens = PromptBuilder(str(default_model_dir()), 4096).chat(
        [{"role": "user", "content": PROMPT}])
    top = max(args.concurrency)
    baseline, _ = await direct_baseline(redis_url, prompt_tokens, 1, min(args.seconds, 2.0))
    base_p50 = percentile(baseline, 0.5) * 1000
    _, direct_rps = await direct_baseline(redis_url, prompt_tokens, top, args.seconds)
    rows: list[dict[str, object]] = []
    await closed_loop(url, 4, 1.0, True)  # warm-up
    for keep_alive in (False, True):
        for concurrency in args.concurrency:
            cpu_before = cpu_seconds(router_pid)
            workers_before = sum(cpu_seconds(pid) for pid in worker_pids)
            ttfts, requests, tokens, elapsed = await closed_loop(
                url, concurrency, args.seconds, keep_alive)
            cpu = cpu_seconds(router_pid) - cpu_before
            worker_cpu = sum(cpu_seconds(pid) for pid in worker_pids) - workers_before
            rows.append({
                "mode": "keep-alive" if keep_alive else "new connection",
                "concurrency": concurrency, "requests": requests,
                "requests_per_s": requests / elapsed, "output_tokens_per_s": tokens / elapsed,
                "ttft_p50_ms": percentile(ttfts, 0.5) * 1000,
                "ttft_p99_ms": percentile(ttfts, 0.99) * 1000,
                "router_cpu_ms_per_request": 1000 * cpu / max(1, requests),
                "decode_workers_cpu_ms_per_request": 1000 * worker_cpu / max(1, requests),
                "tokens_per_request": tokens / max(1, requests)})
    print(f"\n{'mode':15s} {'conc':>5s} {'req/s':>8s} {'tok/s':>8s} {'TTFT p50':>9s} "
          f"{'TTFT p99':>9s} {'CPU ms/req':>10s}")
    for row in rows:
        print(f"{row['mode']:15s} {row['concurrency']:5d} {row['requests_per_s']:8.1f} "
              f"{row['output_tokens_per_s']:8.0f} {row['ttft_p50_ms']:8.2f}  "
              f"{row['ttft_p99_ms']:8.2f}  {row['router_cpu_ms_per_request']:9.2f}")

    def row(mode: str, concurrency: int) -> dict[str, object]:
        return next(r for r in rows if r["mode"] == mode and r["concurrency"] == concurrency)

    def value(mode: str, concurrency: int, key: str) -> float:
        figure = row(mode, concurrency)[key]
        assert isinstance(figure, float)
        return figure

    new_p50 = value("new connection", 1, "ttft_p50_ms")
    keep_p50 = value("keep-alive", 1, "ttft_p50_ms")
    cpu_load = value("keep-alive", top, "router_cpu_ms_per_request")
    worker_cpu_load = value("keep-alive", top, "decode_workers_cpu_ms_per_request")
    best_rps = max(float(r["requests_per_s"]) for r in rows)  # type: ignore[arg-type]
    figures = [
        Figure("TTFT p50, concurrency 1, new connection", new_p50, "ms", base_p50,
               "direct gRPC to decode", "<= 5 ms", new_p50 <= 5),
        Figure("TTFT p50, concurrency 1, keep-alive", keep_p50, "ms", base_p50,
               "direct gRPC to decode", "<= 9 ms", keep_p50 <= 9),
        Figure("router overhead on TTFT p50 (keep-alive)", keep_p50 - base_p50, "ms"),
        Figure(f"router CPU per request, concurrency {top}", cpu_load, "ms", worker_cpu_load,
               "decode workers' CPU, same requests", "<= 1 ms", cpu_load <= 1),
        Figure("best throughput (32-token streams)", best_rps, "req/s", direct_rps,
               f"direct gRPC, concurrency {top}", ">= 600 req/s", best_rps >= 600),
    ]
    return figures, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per point")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32, 128], help="comma-separated concurrency levels")
    parser.add_argument("--decode-workers", type=int, default=2)
    args = parser.parse_args(argv)
    redis = PrivateRedis()
    http_port = free_port()
    processes = [spawn("services.decode", [
        "--engine", "mock", "--mock-decode-ms", "0", "--mock-prefill-ms-per-token", "0",
        "--port", "0", "--redis-url", redis.url, "--namespace", NAMESPACE,
        "--worker-id", f"decode-{i}"]) for i in range(args.decode_workers)]
    router = spawn("services.router", [
        "--redis-url", redis.url, "--namespace", NAMESPACE, "--http-port", str(http_port),
        "--grpc-port", "0"])
    processes.append(router)
    try:
        print("==> starting redis, mock decode workers and the router", file=sys.stderr)
        wait_healthy(f"http://127.0.0.1:{http_port}/health")
        worker_pids = [process.pid for process in processes if process is not router]
        figures, rows = asyncio.run(run(args, router.pid, worker_pids, http_port, redis.url))
        report("router_overhead", figures, {
            "command": "python -m bench.router_overhead", "rows": rows,
            "topology": f"{args.decode_workers} mock decode workers (0 ms steps), 1 router "
                        "process, load generator in this process; 2 cores shared"})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(20)
        redis.stop()


if __name__ == "__main__":
    main()
