"""Router overhead and capacity, with workers that cost (almost) nothing.

    python -m bench.router_overhead [--seconds 4] [--concurrency 1,8,32,128]

Topology, as separate processes: a private Redis, decode workers on the mock engine at
effectively infinite speed (0 ms steps), and the router (``--router-processes``: one sweep per
process count, each a fresh router). Each request is a streamed chat completion of a
~100-token prompt with 32 output tokens; each prompt is unique (a request number leads it), so
no cache sees the same text twice. For every concurrency and connection mode (keep-alive, or a
new connection per request) a closed loop runs for ``--seconds``; CPU comes from
/proc/<pid>/stat (the router's processes, the decode workers, this load generator). Tokens are
counted from the usage chunk; SSE chunks per request show the worker's token coalescing
(tokens that were ready together travel in one message and one chunk). Same-run baselines: the
same token stream requested straight from the decode workers over gRPC (no router, no HTTP):
TTFT at concurrency 1, throughput at the top concurrency; and the decode workers' own CPU per
request (they send the same gRPC messages the router reads); and the relay floor
(``bench.relay_floor``: HTTP in, one grpc.aio call, one SSE chunk per message, nothing else) in
the router's place at the top concurrency, so the router's CPU reads as the floor of any Python
relay plus what the router's own work adds.

Targets (issue 5; a leading Rust frontend measured on this machine kind): TTFT p50 ≤ 5 ms at
concurrency 1 with a new connection per request and ≤ 9 ms with keep-alive, ≤ 1 ms of router
CPU per request under load, ≥ 600 requests/s with 32-token streams. The load generator runs
on the same 2 cores as the router and the workers, so every figure here is pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import aiohttp
import grpc
import orjson
import redis.asyncio as aioredis

from bench.common import Figure, percentile, report
from tandem.discovery import WorkerWatcher
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.spawn import ServiceProcess, http_ok, stop_all
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc

MODEL = "SmolLM2-135M-Instruct"
NAMESPACE = "bench-router"
OUTPUT_TOKENS = 32
PROMPT = ("You are a concise assistant. Answer in one sentence. " * 8).strip()
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def spawn(module: str, args: list[str]) -> ServiceProcess:
    return ServiceProcess(module, module, [*args, "--log-level", "warning"], quiet=True).start()


def wait_healthy(url: str, process: ServiceProcess, timeout_s: float = 120) -> None:
    process.wait_ready(lambda: http_ok(url, 1), timeout_s)


def request_body(number: int) -> bytes:
    return orjson.dumps({
        "model": MODEL, "messages": [{"role": "user", "content": f"Request {number}. {PROMPT}"}],
        "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "temperature": 0})


async def one_request(session: aiohttp.ClientSession, url: str, number: int
                      ) -> tuple[float, int, int]:
    """(time to first token, tokens, SSE chunks with text) of one streamed chat completion."""
    started = time.perf_counter()
    first = 0.0
    chunks = 0
    usage: dict[str, int] = {}
    async with session.post(url, data=request_body(number), headers=_JSON) as reply:
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {await reply.text()}")
        async for line in reply.content:
            if not line.startswith(b"data: {"):
                continue
            if b'"content":"' in line and b'"content":""' not in line:
                chunks += 1
                if not first:
                    first = time.perf_counter() - started
            elif b'"usage":{' in line:
                usage = orjson.loads(line[len(b"data: "):])["usage"]
    return first, usage.get("completion_tokens", 0), chunks


_JSON = {"content-type": "application/json"}


@dataclasses.dataclass
class LoopResult:
    ttfts: list[float] = dataclasses.field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    chunks: int = 0
    elapsed_s: float = 0.0


async def closed_loop(url: str, concurrency: int, seconds: float, keep_alive: bool
                      ) -> LoopResult:
    connector = aiohttp.TCPConnector(limit=0, force_close=not keep_alive)
    result = LoopResult()
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=connector) as session:
        async def user() -> None:
            while time.perf_counter() < deadline:
                first, tokens, chunks = await one_request(session, url, next(_numbers))
                result.ttfts.append(first)
                result.requests += 1
                result.tokens += tokens
                result.chunks += chunks

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


_numbers = itertools.count()


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


def router_pids(router: ServiceProcess) -> list[int]:
    """The router process and, under a supervisor (``--processes``), its router processes."""
    children = Path(f"/proc/{router.pid}/task/{router.pid}/children").read_text().split()
    return [router.pid, *map(int, children)]


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (one per router process once they all bound it)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines
               if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


def start_router(redis_url: str, http_port: int, processes: int) -> ServiceProcess:
    router = spawn("services.router", [
        "--redis-url", redis_url, "--namespace", NAMESPACE, "--http-port", str(http_port),
        "--grpc-port", "0", "--processes", str(processes)])
    router.wait_ready(lambda: listeners(http_port) >= processes, 180)
    # Every process answers health only after its own canary: wait for a run of successes.
    for _ in range(10 * processes):
        wait_healthy(f"http://127.0.0.1:{http_port}/health", router)
    return router


async def sweep(args: argparse.Namespace, url: str, processes: int, pids: list[int],
                worker_pids: list[int], concurrencies: list[int] | None = None
                ) -> list[dict[str, object]]:
    """One closed loop per connection mode and concurrency against one router (processes 0:
    the relay floor)."""
    rows: list[dict[str, object]] = []
    await closed_loop(url, 4, 1.0, True)  # warm-up
    bench_pid = os.getpid()
    for keep_alive in (False, True):
        for concurrency in concurrencies or args.concurrency:
            before = [sum(cpu_seconds(pid) for pid in group)
                      for group in (pids, worker_pids, [bench_pid])]
            result = await closed_loop(url, concurrency, args.seconds, keep_alive)
            router_cpu, worker_cpu, client_cpu = (
                sum(cpu_seconds(pid) for pid in group) - start
                for group, start in zip((pids, worker_pids, [bench_pid]), before, strict=True))
            requests = max(1, result.requests)
            rows.append({
                "router_processes": processes,
                "mode": "keep-alive" if keep_alive else "new connection",
                "concurrency": concurrency, "requests": result.requests,
                "requests_per_s": result.requests / result.elapsed_s,
                "output_tokens_per_s": result.tokens / result.elapsed_s,
                "ttft_p50_ms": percentile(result.ttfts, 0.5) * 1000,
                "ttft_p99_ms": percentile(result.ttfts, 0.99) * 1000,
                "router_cpu_ms_per_request": 1000 * router_cpu / requests,
                "decode_workers_cpu_ms_per_request": 1000 * worker_cpu / requests,
                "load_generator_cpu_ms_per_request": 1000 * client_cpu / requests,
                "tokens_per_request": result.tokens / requests,
                "sse_chunks_per_request": result.chunks / requests})
    return rows


def print_rows(rows: list[dict[str, object]]) -> None:
    print(f"\n{'procs':>5s} {'mode':15s} {'conc':>5s} {'req/s':>8s} {'tok/s':>8s} "
          f"{'TTFT p50':>9s} {'TTFT p99':>9s} {'router CPU':>10s} {'workers':>8s} "
          f"{'client':>7s} {'chunks':>6s}")
    for row in rows:
        print(f"{row['router_processes']:5d} {row['mode']:15s} {row['concurrency']:5d} "
              f"{row['requests_per_s']:8.1f} {row['output_tokens_per_s']:8.0f} "
              f"{row['ttft_p50_ms']:8.2f}  {row['ttft_p99_ms']:8.2f}  "
              f"{row['router_cpu_ms_per_request']:9.2f}  "
              f"{row['decode_workers_cpu_ms_per_request']:7.2f} "
              f"{row['load_generator_cpu_ms_per_request']:7.2f} "
              f"{row['sse_chunks_per_request']:6.1f}")
    print("(CPU columns: ms per request; chunks: SSE chunks with text per 32-token stream; "
          "procs 0: the relay floor, bench.relay_floor, in the router's place)")


def figures_of(rows: list[dict[str, object]], top: int, base_p50: float, direct_rps: float
               ) -> list[Figure]:
    def value(processes: int, mode: str, concurrency: int, key: str) -> float:
        row = next(r for r in rows if r["router_processes"] == processes
                   and r["mode"] == mode and r["concurrency"] == concurrency)
        figure = row[key]
        assert isinstance(figure, float)
        return figure

    floor = [r for r in rows if r["router_processes"] == 0]
    routers = [r for r in rows if r["router_processes"] != 0]
    new_p50 = value(1, "new connection", 1, "ttft_p50_ms")
    keep_p50 = value(1, "keep-alive", 1, "ttft_p50_ms")
    cpu_load = value(1, "keep-alive", top, "router_cpu_ms_per_request")
    worker_cpu_load = value(1, "keep-alive", top, "decode_workers_cpu_ms_per_request")
    best = max(routers, key=lambda r: float(r["requests_per_s"]))  # type: ignore[arg-type]
    best_rps = float(best["requests_per_s"])  # type: ignore[arg-type]
    figures = [
        Figure("TTFT p50, concurrency 1, new connection", new_p50, "ms", base_p50,
               "direct gRPC to decode", "<= 5 ms", new_p50 <= 5),
        Figure("TTFT p50, concurrency 1, keep-alive", keep_p50, "ms", base_p50,
               "direct gRPC to decode", "<= 9 ms", keep_p50 <= 9),
        Figure("router overhead on TTFT p50 (keep-alive)", keep_p50 - base_p50, "ms"),
        Figure(f"router CPU per request, concurrency {top}", cpu_load, "ms", worker_cpu_load,
               "decode workers' CPU, same requests", "<= 1 ms", cpu_load <= 1),
        Figure(f"best throughput (32-token streams; {best['router_processes']} router "
               f"process(es), {best['mode']}, concurrency {best['concurrency']})", best_rps,
               "req/s", direct_rps, f"direct gRPC, concurrency {top}", ">= 600 req/s",
               best_rps >= 600),
    ]
    if floor:
        relay_cpu = value(0, "keep-alive", top, "router_cpu_ms_per_request")
        relay_rps = max(float(r["requests_per_s"]) for r in floor)  # type: ignore[arg-type]
        figures += [
            Figure(f"Python relay floor CPU per request, concurrency {top}", relay_cpu, "ms",
                   cpu_load, "the router's, same run"),
            Figure("router CPU per request / relay floor's", cpu_load / relay_cpu, "x"),
            Figure("best throughput through the relay floor", relay_rps, "req/s", best_rps,
                   "the router's, same run")]
    for processes in sorted({int(r["router_processes"]) for r in routers} - {1}):  # type: ignore[call-overload]
        rps = max(float(r["requests_per_s"]) for r in routers  # type: ignore[arg-type]
                  if r["router_processes"] == processes)
        one = max(float(r["requests_per_s"]) for r in routers  # type: ignore[arg-type]
                  if r["router_processes"] == 1)
        figures.append(Figure(f"best throughput, {processes} router processes", rps, "req/s",
                              one, "1 router process, same run"))
    return figures


def prompt_token_ids() -> list[int]:
    """The benchmark's prompt as the router tokenizes it (chat template applied)."""
    from services.router.prompts import PromptBuilder
    from tandem.model import default_model_dir

    return PromptBuilder(str(default_model_dir()), 4096).chat(
        [{"role": "user", "content": PROMPT}])


async def baselines(args: argparse.Namespace, redis_url: str) -> tuple[float, float]:
    """TTFT p50 (ms) at concurrency 1 and requests/s at the top concurrency, straight from the
    decode workers over gRPC."""
    prompt_tokens = prompt_token_ids()
    ttfts, _ = await direct_baseline(redis_url, prompt_tokens, 1, min(args.seconds, 2.0))
    _, direct_rps = await direct_baseline(redis_url, prompt_tokens, max(args.concurrency),
                                          args.seconds)
    return percentile(ttfts, 0.5) * 1000, direct_rps


async def floor_sweep(args: argparse.Namespace, redis_url: str, worker_pids: list[int],
                      processes: list[ServiceProcess]) -> list[dict[str, object]]:
    """The same load through ``bench.relay_floor`` (rows with router_processes 0)."""
    client = aioredis.Redis.from_url(redis_url)
    workers = list((await WorkerWatcher(client, NAMESPACE).refresh()).values())
    await client.aclose()
    port = free_port()
    relay = spawn("bench.relay_floor", [
        "--port", str(port), "--prompt-tokens", ",".join(map(str, prompt_token_ids())),
        "--max-tokens", str(OUTPUT_TOKENS),
        *(arg for w in workers for arg in ("--worker", w.address))])
    processes.append(relay)
    await asyncio.to_thread(relay.wait_ready, lambda: listeners(port) >= 1, 60)
    try:
        return await sweep(args, f"http://127.0.0.1:{port}/v1/chat/completions", 0,
                           [relay.pid], worker_pids, [max(args.concurrency)])
    finally:
        relay.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="load time per point")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 32, 128],
                        help="comma-separated concurrency levels (must include 1)")
    parser.add_argument("--router-processes", type=_int_list, default=[1, 2],
                        help="comma-separated router process counts, one sweep each "
                             "(must include 1)")
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the relay-floor sweep (bench.relay_floor)")
    args = parser.parse_args(argv)
    redis = PrivateRedis()
    workers = [spawn("services.decode", [
        "--engine", "mock", "--mock-decode-ms", "0", "--mock-prefill-ms-per-token", "0",
        "--port", "0", "--redis-url", redis.url, "--namespace", NAMESPACE,
        "--worker-id", f"decode-{i}"]) for i in range(args.decode_workers)]
    processes = list(workers)
    try:
        print("==> starting redis, mock decode workers and the router", file=sys.stderr)
        rows: list[dict[str, object]] = []
        base_p50 = direct_rps = 0.0
        for count in args.router_processes:
            http_port = free_port()
            router = start_router(redis.url, http_port, count)
            processes.append(router)
            if not rows:
                base_p50, direct_rps = asyncio.run(baselines(args, redis.url))
            url = f"http://127.0.0.1:{http_port}/v1/chat/completions"
            rows += asyncio.run(sweep(args, url, count, router_pids(router),
                                      [w.pid for w in workers]))
            router.stop(timeout_s=60)
        if args.floor:
            rows += asyncio.run(floor_sweep(args, redis.url, [w.pid for w in workers],
                                            processes))
        print_rows(rows)
        figures = figures_of(rows, max(args.concurrency), base_p50, direct_rps)
        report("router_overhead", figures, {
            "command": "python -m bench.router_overhead", "rows": rows,
            "topology": f"{args.decode_workers} mock decode workers (0 ms steps), router with "
                        f"{'/'.join(map(str, args.router_processes))} process(es), load "
                        "generator in this process; all on the same 2 cores"})
    finally:
        stop_all(processes, timeout_s=60)
        redis.stop()


def _int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",")]


if __name__ == "__main__":
    main()
