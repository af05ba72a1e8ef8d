"""tandem's router beside NVIDIA Dynamo 1.6.1's frontend, same machine, same run, same load
generator (the peer's ``loadgen.py``).

    python -m bench.vs_dynamo [--rounds 1] [--mode overhead|kv|both]

``overhead`` (issue 15 item 1): Dynamo's frontend with 4 mocker workers (speedup 10000, round
robin) and tandem's router with 4 mock decode workers (0 ms steps), in turn, each round; each
driven at the points of the issue's table: a new connection per request at concurrency 1,
keep-alive at 1, 32 and 128 (streamed chat, ~100-token unique prompts, 32 output tokens).
Figures: requests/s, TTFT p50, and the frontend's or router's CPU per request from /proc
(utime + stime, reaped children included, as the peer's ``cpu_of.py``), with tandem's ratio
to Dynamo's figure of the same round.

``kv`` (item 2, see ``bench.vs_dynamo_kv``): the peer's ``kv_vs_rr_hard.sh`` workload on both.

At 32 and 128 streams, beside the router as it ships (over the workers' token streams): the
same router over gRPC (``--token-stream false``), and, with the floor (default; ``--no-floor``
skips it), ``bench.relay_floor`` in the router's place over the same workers, once over
grpc.aio and once over the token stream: the least a Python HTTP relay spends on each
transport.

Ports: Dynamo's frontend 24080, its ZMQ broker 24555/24556, tandem's router 24081, the relay
floor 24082, tandem's Redis 24379 (``--port-base`` moves them together); the workers take
free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from bench.common import Figure, report
from bench.peer_dynamo import Dynamo, ensure_installed, load_average, loadgen
from bench.router_overhead import listeners, prompt_token_ids
from tandem.discovery import WorkerInfo, WorkerWatcher
from tandem.redis_local import PrivateRedis
from tandem.service.spawn import ServiceProcess, http_ok, stop_all

NAMESPACE = "bench-vs-dynamo"
POINTS = (  # label, loadgen arguments
    ("newconn_c1", ["--new-conn", "--concurrency", "1", "--num-requests", "300",
                    "--warmup", "16"]),
    ("c1", ["--concurrency", "1", "--num-requests", "300", "--warmup", "16"]),
    ("c32", ["--concurrency", "32", "--num-requests", "3000", "--warmup", "32"]),
    ("c128", ["--concurrency", "128", "--num-requests", "4000", "--warmup", "128"]),
)
WORKLOAD = ["--workload", "random", "--prompt-words", "70", "--max-tokens", "32"]


def spawn(module: str, args: list[str]) -> ServiceProcess:
    return ServiceProcess(module, module, [*args, "--log-level", "warning"], quiet=True).start()


def start_tandem(redis_url: str, http_port: int, policy: str, workers: list[str],
                 fleet: int = 0, router_args: Sequence[str] = ()) -> list[ServiceProcess]:
    """Mock decode workers (one process each, or ``fleet`` of them in one process) and one
    router process on ``http_port``; returns them, the router last."""
    common = ["--engine", "mock", "--redis-url", redis_url, "--namespace", NAMESPACE, *workers]
    if fleet:
        processes = [spawn("services.decode.fleet", [*common, "--num-workers", str(fleet)])]
    else:
        processes = [spawn("services.decode", [*common, "--port", "0",
                                               "--worker-id", f"decode-{i}"])
                     for i in range(4)]
    router = spawn("services.router", [
        "--redis-url", redis_url, "--namespace", NAMESPACE, "--http-port", str(http_port),
        "--grpc-port", "0", "--routing-policy", policy, *router_args])
    processes.append(router)
    try:
        router.wait_ready(lambda: http_ok(f"http://127.0.0.1:{http_port}/health", 1), 180)
        time.sleep(3 if not fleet else 5)  # every worker registered, as side_by_side.sh
    except BaseException:
        stop_all(processes)
        raise
    return processes


def cpu_ms_per_request(row: dict[str, object], prefix: str) -> float:
    cores = row["cpu_cores"]
    assert isinstance(cores, dict)
    rate = float(row["req_per_s"])  # type: ignore[arg-type]
    busy = sum(v for k, v in cores.items() if k.startswith(prefix) and v is not None)
    return 1000 * busy / rate if rate else float("nan")


def summary(row: dict[str, object], system: str, prefix: str) -> dict[str, object]:
    """A loadgen row's figures; ``prefix`` names the router's (frontend's) pids. The CPU of the
    other pids measured (the workers) and of the load generator itself are kept too: on these
    shared cores they bound the throughput."""
    ttft, e2e, itl, cores = row["ttft_ms"], row["e2e_ms"], row["itl_ms"], row["cpu_cores"]
    assert isinstance(ttft, dict) and isinstance(e2e, dict) and isinstance(itl, dict)
    assert isinstance(cores, dict)
    return {"system": system, "label": row["label"], "req_per_s": row["req_per_s"],
            "ttft_p50_ms": ttft["p50"], "e2e_p50_ms": e2e["p50"], "itl_p50_ms": itl["p50"],
            "cpu_ms_per_request": cpu_ms_per_request(row, prefix),
            "workers_cpu_cores": sum(v for k, v in cores.items()
                                     if not k.startswith(prefix) and v is not None),
            "router_cpu_cores": sum(v for k, v in cores.items()
                                    if k.startswith(prefix) and v is not None),
            "loadgen_cpu_cores": row["client_cpu_cores"],
            "errors": row["errors"], "load_average": load_average()}


FLOORS = {"floor": "grpc", "floorstream": "token-stream"}
"""The relay floors: system name → ``bench.relay_floor --transport``."""


def floor_points(home: Path, number: int, ports: dict[str, int], redis_url: str
                 ) -> list[dict[str, object]]:
    """The relay floors (``bench.relay_floor``: HTTP in, one call to the same workers, one SSE
    chunk per message, nothing else) in the router's place, at 32 and 128 streams, over grpc.aio
    and over the workers' token streams: what any Python relay on each transport spends
    before doing router work."""
    client = aioredis.Redis.from_url(redis_url)
    workers = list(asyncio.run(_workers(client)).values())
    rows = []
    for system, transport in FLOORS.items():
        addresses = [w.address if transport == "grpc"
                     else f"{w.address.rsplit(':', 1)[0]}:{w.stream_port}" for w in workers]
        relay = spawn("bench.relay_floor", [
            "--port", str(ports["floor"]), "--transport", transport,
            "--prompt-tokens", ",".join(map(str, prompt_token_ids())), "--max-tokens", "32",
            *(arg for address in addresses for arg in ("--worker", address))])
        try:
            relay.wait_ready(lambda: listeners(ports["floor"]) >= 1, 60)
            for label, args in POINTS[2:]:
                row = loadgen(home, ports["floor"], f"{system}_r{number}_{label}",
                              {"relay": relay.pid}, [*WORKLOAD, *args])
                rows.append(summary(row, system, "relay"))
        finally:
            relay.stop()
    return rows


async def _workers(client: aioredis.Redis) -> dict[str, WorkerInfo]:
    try:
        return await WorkerWatcher(client, NAMESPACE).refresh()
    finally:
        await client.aclose()


def overhead_round(home: Path, number: int, ports: dict[str, int], floor: bool
                   ) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    print(f"==> round {number}: Dynamo (frontend + 4 mocker workers, speedup 10000)",
          file=sys.stderr, flush=True)
    with Dynamo(home, "round-robin", ["--num-workers", "4", "--speedup-ratio", "10000"],
                ports["dynamo"], (ports["zmq_xsub"], ports["zmq_xpub"])) as peer:
        pids = {k: v for k, v in peer.pids().items() if k != "broker"}
        for label, args in POINTS:
            row = loadgen(home, ports["dynamo"], f"dynamo_r{number}_{label}", pids,
                          [*WORKLOAD, *args])
            rows.append(summary(row, "dynamo", "frontend"))
    redis = PrivateRedis(port=ports["redis"])
    try:
        for system, router_args, points in (
                ("tandem", [], POINTS),
                ("tandemgrpc", ["--token-stream", "false"], POINTS[2:])):
            print(f"==> round {number}: {system} (router {' '.join(router_args)} + 4 mock "
                  f"decode workers, 0 ms steps)", file=sys.stderr, flush=True)
            processes = start_tandem(redis.url, ports["tandem"], "round_robin", [
                "--mock-decode-ms", "0", "--mock-prefill-ms-per-token", "0"],
                router_args=router_args)
            try:
                pids = {"router": processes[-1].pid,
                        **{f"worker{i}": p.pid for i, p in enumerate(processes[:-1])}}
                for label, args in points:
                    row = loadgen(home, ports["tandem"], f"{system}_r{number}_{label}", pids,
                                  [*WORKLOAD, *args])
                    rows.append(summary(row, system, "router"))
                if floor and system == "tandem":
                    rows += floor_points(home, number, ports, redis.url)
            finally:
                stop_all(processes, timeout_s=30)
    finally:
        redis.stop()
    return rows


def overhead_figures(rows: list[dict[str, object]]) -> list[Figure]:
    """tandem's figure at each point against Dynamo's of the same round (the worst round's
    ratio is the one quoted: every round is listed in the JSON)."""
    figures = []
    for label, _ in POINTS:
        pairs = [(d, t) for d in rows for t in rows
                 if d["system"] == "dynamo" and t["system"] == "tandem"
                 and _point(d) == _point(t) == label and _round(d) == _round(t)]
        for key, unit, higher_better in (("req_per_s", "req/s", True),
                                         ("ttft_p50_ms", "ms", False),
                                         ("cpu_ms_per_request", "ms/req", False)):
            worst = min(pairs, key=lambda p: _ratio(p, key) * (1 if higher_better else -1))
            dynamo_row, tandem_row = worst
            target, met = _target(label, key, _ratio(worst, key))
            figures.append(Figure(f"{label} {key}", float(tandem_row[key]), unit,  # type: ignore[arg-type]
                                  float(dynamo_row[key]), "Dynamo",  # type: ignore[arg-type]
                                  target, met))
    for f in rows:
        if f["system"] in BASELINES:
            d = next(r for r in rows if r["system"] == "dynamo" and _round(r) == _round(f)
                     and _point(r) == _point(f))
            for key, unit in (("cpu_ms_per_request", "ms/req"), ("req_per_s", "req/s")):
                figures.append(Figure(f"{_point(f)} {BASELINES[str(f['system'])]} {key} "
                                      f"{_round(f)}", float(f[key]), unit,  # type: ignore[arg-type]
                                      float(d[key]), "Dynamo"))  # type: ignore[arg-type]
    return figures


BASELINES = {"tandemgrpc": "router over gRPC", "floor": "relay floor over grpc.aio",
             "floorstream": "relay floor over the token stream"}
"""Rows measured beside tandem's router in the same round, and their names in the table."""


def _point(row: dict[str, object]) -> str:
    return str(row["label"]).split("_", 2)[2]  # <system>_r<round>_<point>


def _round(row: dict[str, object]) -> str:
    return str(row["label"]).split("_", 2)[1]


def _ratio(pair: tuple[dict[str, object], dict[str, object]], key: str) -> float:
    dynamo_value, tandem_value = float(pair[0][key]), float(pair[1][key])  # type: ignore[arg-type]
    return tandem_value / dynamo_value if dynamo_value else float("nan")


def _target(label: str, key: str, ratio: float) -> tuple[str, bool | None]:
    """Issue 15's targets, as ratios to Dynamo's figure."""
    if key == "cpu_ms_per_request" and label in ("c32", "c128"):
        return "<= 1x Dynamo (floor case: <= 1.3x)", ratio <= 1.0
    if key == "req_per_s" and label == "c128":
        return ">= 1x Dynamo (floor case: >= 0.75x)", ratio >= 1.0
    if key == "ttft_p50_ms" and label == "c32":
        return "<= 1x Dynamo", ratio <= 1.0
    if key == "req_per_s" and label == "c1":
        return "> 1x Dynamo (keep-alive advantage)", ratio > 1.0
    return "", None


def print_table(rows: list[dict[str, object]]) -> None:
    print("\n| point | round | Dynamo req/s | tandem req/s | ratio | Dynamo CPU ms/req | "
          "tandem CPU ms/req | ratio | TTFT p50 Dynamo / tandem ms | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in rows:
        if d["system"] != "dynamo":
            continue
        label = str(d["label"])
        match = [t for t in rows if t["system"] == "tandem"
                 and str(t["label"]) == label.replace("dynamo_", "tandem_", 1)]
        if not match:
            continue
        t = match[0]
        _, rnd, point = label.split("_", 2)
        print(f"| {point} | {rnd} | {d['req_per_s']:.0f} | {t['req_per_s']:.0f} | "
              f"{_ratio((d, t), 'req_per_s'):.2f}x | {d['cpu_ms_per_request']:.2f} | "
              f"{t['cpu_ms_per_request']:.2f} | {_ratio((d, t), 'cpu_ms_per_request'):.2f}x | "
              f"{d['ttft_p50_ms']:.1f} / {t['ttft_p50_ms']:.1f} | "
              f"{d['load_average']:.1f} / {t['load_average']:.1f} |")
    print("\n| point | round | e2e p50 Dynamo / tandem ms | ITL p50 Dynamo / tandem ms | "
          "cores: frontend, workers, loadgen (Dynamo) | router, workers, loadgen (tandem) |")
    print("|---|---|---|---|---|---|")
    for d in rows:
        same = [t for t in rows if t["system"] == "tandem"
                and str(t["label"]) == str(d["label"]).replace("dynamo_", "tandem_", 1)]
        if d["system"] != "dynamo" or not same:
            continue
        t = same[0]
        _, rnd, point = str(d["label"]).split("_", 2)
        print(f"| {point} | {rnd} | {d['e2e_p50_ms']:.1f} / {t['e2e_p50_ms']:.1f} | "
              f"{d['itl_p50_ms']:.2f} / {t['itl_p50_ms']:.2f} | " + " | ".join(
                  f"{r['router_cpu_cores']:.2f}, {r['workers_cpu_cores']:.2f}, "
                  f"{r['loadgen_cpu_cores']:.2f}" for r in (d, t)) + " |")
    for f in rows:
        if f["system"] in BASELINES:
            d = next(r for r in rows if r["system"] == "dynamo" and _round(r) == _round(f)
                     and _point(r) == _point(f))
            print(f"{BASELINES[str(f['system'])]}, {_round(f)} {_point(f)}: "
                  f"{f['req_per_s']:.0f} req/s ({_ratio((d, f), 'req_per_s'):.2f}x Dynamo), "
                  f"{f['cpu_ms_per_request']:.2f} CPU ms/req "
                  f"({_ratio((d, f), 'cpu_ms_per_request'):.2f}x), TTFT p50 "
                  f"{f['ttft_p50_ms']:.1f} ms (load {f['load_average']:.1f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="Dynamo, then tandem, this many times (overhead mode)")
    parser.add_argument("--mode", choices=("overhead", "kv", "both"), default="both")
    parser.add_argument("--port-base", type=int, default=24000,
                        help="ports used: base+80 (Dynamo), +81 (router), +82 (relay floor), "
                             "+379 (Redis), "
                             "+555/+556 (Dynamo's ZMQ broker)")
    parser.add_argument("--requests", type=int, default=512, help="kv mode: requests per run")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="overhead mode: skip the relay floor (bench.relay_floor) at 32 and "
                             "128 streams")
    args = parser.parse_args(argv)
    base = args.port_base
    ports = {"dynamo": base + 80, "tandem": base + 81, "floor": base + 82, "redis": base + 379,
             "zmq_xsub": base + 555, "zmq_xpub": base + 556}
    home = ensure_installed()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    figures: list[Figure] = []
    extra: dict[str, object] = {"command": "python -m bench.vs_dynamo " + " ".join(
        argv if argv is not None else sys.argv[1:]), "started": started, "ports": ports}
    if args.mode in ("overhead", "both"):
        rows: list[dict[str, object]] = []
        for number in range(1, args.rounds + 1):
            rows += overhead_round(home, number, ports, args.floor)
        print_table(rows)
        figures += overhead_figures(rows)
        extra["overhead_rows"] = rows
        extra["overhead_topology"] = (
            "Dynamo 1.6.1 frontend (round-robin) + 4 mocker workers at speedup 10000; tandem "
            "router (1 process, round_robin) + 4 mock decode workers at 0 ms steps; the peer's "
            "loadgen.py, streamed chat, ~100-token prompts, 32 output tokens; all on this "
            "machine's cores")
    if args.mode in ("kv", "both"):
        from bench.vs_dynamo_kv import kv_figures, kv_runs

        kv_rows = kv_runs(home, ports, args.requests)
        figures += kv_figures(kv_rows)
        extra["kv_rows"] = kv_rows
    # one file per mode run alone, so an overhead run and a kv run do not overwrite each other
    report("vs_dynamo" if args.mode == "both" else f"vs_dynamo_{args.mode}", figures, extra)


if __name__ == "__main__":
    main()
