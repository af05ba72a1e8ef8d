"""uvicorn against granian (a Rust ASGI server) under the router's relay, same run, same workers
(issue 15's lever "a Rust-based ASGI server if it measurably beats uvicorn here").

    python -m bench.asgi_servers [--rounds 2] [--port-base 25100]

The app is ``bench.relay_floor``'s relay written as a minimal ASGI application (``app`` here):
for every ``POST`` it reads the body, makes one token-stream ``Generate`` call (the prompt
tokenized once at start; ``relay_floor.callers("token-stream", ...)``, coalescing as the router
does) to the next worker in turn, and sends one SSE chunk per worker message as an
``http.response.body`` with ``more_body=True``, then the usage chunk and ``[DONE]``. It is
served, each in its own process in turn against the same 4 mock decode workers (0 ms steps,
one private Redis, no router), by:

- ``uvicorn``: the router's own ``services.router.api.server.HttpServer`` (httptools with
  TCP_NODELAY, access log off, lifespan off) on uvloop;
- ``granian``: ``python -m granian --interface asginl --http 1 --workers 1`` on one
  single-threaded Rust runtime, uvloop, ``--task-impl`` rust (``--granian-args`` replaces
  these options); the CPU counted is the supervisor's and its worker process's;
- ``granian_embed``: granian's embedded server (``granian.server.embed.Server``, experimental)
  started inside this module's own uvloop loop (Rust tasks; its Rust I/O runtime on threads of
  its own, embedded mode has no single-threaded runtime), as the router would have to run it to
  keep its asyncio services (Redis watchers, gRPC, telemetry) on one loop with the HTTP API;
- ``floor``: ``bench.relay_floor --transport token-stream`` (raw httptools asyncio.Protocol, no
  ASGI) for reference.

Each is driven by the Dynamo peer's load generator at the c32 and c128 points of
``bench.vs_dynamo`` (its ``WORKLOAD``), ``--rounds`` times alternated. Figures: requests/s,
server CPU ms per request (utime + stime of every process of the server, from /proc), TTFT p50,
with ratios to uvicorn's figure of the same round; each row also keeps the server's CPU by
process and by thread (``server_thread_cores``: averaged over the load generator's whole run,
warm-up included, so only the split between threads is meaningful).

Granian's options were picked on this machine (1 round each, c32/c128, CPU ms/request against
uvicorn's of the same run): single-threaded runtime + Rust tasks on uvloop was the least
costly; asyncio tasks, the multi-threaded runtime, ``--loop rloop``, ``--http auto`` and
``--backpressure 128`` each cost as much or more.

Ports: servers base+0..3, Redis base+79 (default base 25100).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.common import Figure, report
from bench.peer_dynamo import ensure_installed, load_average, loadgen
from bench.relay_floor import Caller, callers, generate_request
from bench.router_overhead import listeners, prompt_token_ids
from bench.vs_dynamo import NAMESPACE, POINTS, WORKLOAD, _workers, spawn, summary
from tandem.redis_local import PrivateRedis
from tandem.service.spawn import ServiceProcess, stop_all
from tandem.v1 import common_pb2

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CONFIG_ENV = "TANDEM_ASGI_RELAY"
"""The relay's configuration (JSON: workers' token-stream addresses, prompt, max_tokens), read by
the app in whichever process serves it (granian's worker imports this module itself)."""

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"

GRANIAN_ARGS = ["--interface", "asginl", "--http", "1", "--workers", "1", "--runtime-mode", "st",
                "--runtime-threads", "1", "--loop", "uvloop", "--task-impl", "rust", "--no-ws",
                "--backlog", "2048", "--no-access-log"]


class _Relay:
    """The relay's state, made on the first request (the token-stream clients belong to the
    serving loop)."""

    def __init__(self) -> None:
        config = json.loads(os.environ[CONFIG_ENV])
        self.calls: list[Caller] = callers("token-stream", config["workers"])
        self.turn = itertools.count()
        self.prompt: list[int] = config["prompt"]
        self.max_tokens: int = config["max_tokens"]


_relay: _Relay | None = None


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The relay as an ASGI application (HTTP only, no lifespan)."""
    global _relay
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    relay = _relay or _Relay()
    _relay = relay
    number = next(relay.turn)
    call = relay.calls[number % len(relay.calls)]
    request = generate_request(f"asgi-{number}", relay.prompt, relay.max_tokens)
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    usage = common_pb2.Usage()
    async for response in call(request):
        await send({"type": "http.response.body", "more_body": True,
                    "body": b'data: {"choices":[{"index":0,"delta":{"content":'
                            + orjson.dumps(response.delta.text) + b"}}]}\n\n"})
        if response.HasField("usage"):
            usage = response.usage
    await send({"type": "http.response.body", "more_body": False,
                "body": b'data: {"choices":[],"usage":' + orjson.dumps({
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens}) + b"}\n\n" + _DONE})


async def _serve_uvicorn(port: int) -> None:
    from services.router.api.server import HttpServer

    server = HttpServer(app, "127.0.0.1", port)
    await server.start()
    await asyncio.Event().wait()


async def _serve_granian_embedded(port: int) -> None:
    from granian.constants import HTTPModes, Interfaces, TaskImpl
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(app, "127.0.0.1", port, interface=Interfaces.ASGINL, http=HTTPModes.http1,
                    websockets=False, backlog=2048, runtime_threads=1,
                    task_impl=TaskImpl.rust, log_level=LogLevels.warning)
    await server.serve()


def serve_main(argv: list[str]) -> None:
    """``python -m bench.asgi_servers serve uvicorn|granian_embed --port P``: one server."""
    import uvloop

    parser = argparse.ArgumentParser(prog="bench.asgi_servers serve")
    parser.add_argument("server", choices=("uvicorn", "granian_embed"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvloop.run(_serve_uvicorn(args.port) if args.server == "uvicorn"
               else _serve_granian_embedded(args.port))


def descendants(pid: int) -> list[int]:
    """``pid``'s live descendants (granian's supervisor forks its workers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def thread_ticks(pids: list[int]) -> dict[str, int]:
    """utime + stime clock ticks of every thread of ``pids`` (``pid/tid name``)."""
    ticks: dict[str, int] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name, fields = (task / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue  # the thread ended
            parts = fields.split()
            ticks[f"{pid}/{task.name} {name.split('(', 1)[1]}"] = int(parts[11]) + int(parts[12])
    return ticks


SERVERS = ("uvicorn", "granian", "granian_embed", "floor")
NAMES = {"uvicorn": "uvicorn (router's HttpServer)", "granian": "granian (own process loop)",
         "granian_embed": "granian embedded in uvloop", "floor": "relay floor (no ASGI)"}


def start_server(system: str, port: int, config: dict[str, object], granian_args: list[str]
                 ) -> ServiceProcess:
    env = {CONFIG_ENV: json.dumps(config)}
    if system == "floor":
        workers = config["workers"]
        assert isinstance(workers, list)
        process = spawn("bench.relay_floor", [
            "--port", str(port), "--transport", "token-stream",
            "--prompt-tokens", ",".join(map(str, prompt_token_ids())), "--max-tokens", "32",
            *(arg for address in workers for arg in ("--worker", address))])
    elif system == "granian":
        process = ServiceProcess(system, "granian", [
            *granian_args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "bench.asgi_servers:app"], env=env, quiet=True).start()
    else:
        process = ServiceProcess(system, "bench.asgi_servers", [
            "serve", system, "--port", str(port)], env=env, quiet=True).start()
    try:
        process.wait_ready(lambda: listeners(port) >= 1, 60)
        time.sleep(1)  # granian's worker binds the shared socket after it imported the app
    except BaseException:
        process.stop()
        raise
    return process


def run_round(home: Path, number: int, ports: dict[str, int], config: dict[str, object],
              systems: list[str], granian_args: list[str], workers: list[ServiceProcess]
              ) -> list[dict[str, object]]:
    rows = []
    for system in systems:
        print(f"==> round {number}: {NAMES[system]}", file=sys.stderr, flush=True)
        server = start_server(system, ports[system], config, granian_args)
        try:
            pids = {"server": server.pid,
                    **{f"server{i}": pid for i, pid in enumerate(descendants(server.pid))},
                    **{f"worker{i}": worker.pid for i, worker in enumerate(workers)}}
            server_pids = [pid for name, pid in pids.items() if name.startswith("server")]
            for label, args in POINTS[2:]:
                before, start = thread_ticks(server_pids), time.monotonic()
                row = loadgen(home, ports[system], f"{system}_r{number}_{label}", pids,
                              [*WORKLOAD, *args])
                after, wall = thread_ticks(server_pids), time.monotonic() - start
                threads = {k: round((v - before.get(k, 0)) / os.sysconf("SC_CLK_TCK") / wall, 3)
                           for k, v in after.items() if v > before.get(k, 0)}
                cores = row["cpu_cores"]
                assert isinstance(cores, dict)
                rows.append({**summary(row, system, "server"),
                             "server_cores": {k: v for k, v in cores.items()
                                              if k.startswith("server")},
                             "server_thread_cores": threads})
        finally:
            server.stop()
    return rows


def _point(row: dict[str, object]) -> str:
    return str(row["label"]).rsplit("_", 1)[1]


def _round(row: dict[str, object]) -> str:
    return str(row["label"]).rsplit("_", 2)[1]


def _same(rows: list[dict[str, object]], row: dict[str, object], system: str
          ) -> dict[str, object] | None:
    return next((r for r in rows if r["system"] == system and _point(r) == _point(row)
                 and _round(r) == _round(row)), None)


def figures_of(rows: list[dict[str, object]]) -> list[Figure]:
    figures = []
    for row in rows:
        base = _same(rows, row, "uvicorn")
        for key, unit in (("req_per_s", "req/s"), ("cpu_ms_per_request", "ms/req"),
                          ("ttft_p50_ms", "ms")):
            figures.append(Figure(
                f"{_point(row)} {row['system']} {key} {_round(row)}", float(row[key]),  # type: ignore[arg-type]
                unit, None if base is None or row is base else float(base[key]),  # type: ignore[arg-type]
                "uvicorn"))
    return figures


def print_table(rows: list[dict[str, object]]) -> None:
    print("\n| point | round | server | req/s | x uvicorn | server CPU ms/req | x uvicorn | "
          "TTFT p50 ms | server cores | workers cores | loadgen cores | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (_point(r), _round(r), SERVERS.index(str(r["system"])))):
        base = _same(rows, row, "uvicorn")

        def ratio(key: str, row: dict[str, object] = row, base: dict[str, object] | None = base
                  ) -> str:
            if base is None:
                return ""
            return f"{float(row[key]) / float(base[key]):.2f}x"  # type: ignore[arg-type]

        print(f"| {_point(row)} | {_round(row)} | {row['system']} | {row['req_per_s']:.0f} | "
              f"{ratio('req_per_s')} | {row['cpu_ms_per_request']:.3f} | "
              f"{ratio('cpu_ms_per_request')} | {row['ttft_p50_ms']:.1f} | "
              f"{row['router_cpu_cores']:.2f} | {row['workers_cpu_cores']:.2f} | "
              f"{row['loadgen_cpu_cores']:.2f} | {row['load_average']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port-base", type=int, default=25100,
                        help="servers base+0..3, Redis base+79")
    parser.add_argument("--systems", default=",".join(SERVERS),
                        help=f"comma-separated, in the order run each round: {SERVERS}")
    parser.add_argument("--granian-args", default=" ".join(GRANIAN_ARGS),
                        help="granian's options (before --host/--port/APP)")
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    try:
        versions = {name: importlib.metadata.version(name) for name in ("granian", "uvicorn")}
    except importlib.metadata.PackageNotFoundError as error:
        raise SystemExit(f"{error.name} is not installed (pip install granian: a measurement "
                         "only, not a dependency of tandem)") from None
    base = args.port_base
    ports = {system: base + i for i, system in enumerate(SERVERS)} | {"redis": base + 79}
    home = ensure_installed()

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[dict[str, object]] = []
    redis = PrivateRedis(port=ports["redis"])
    workers: list[ServiceProcess] = []
    try:
        common = ["--engine", "mock", "--redis-url", redis.url, "--namespace", NAMESPACE,
                  "--mock-decode-ms", "0", "--mock-prefill-ms-per-token", "0"]
        workers = [spawn("services.decode", [*common, "--port", "0", "--worker-id",
                                             f"decode-{i}"]) for i in range(4)]
        deadline = time.monotonic() + 180
        while True:
            found = asyncio.run(_workers(aioredis.Redis.from_url(redis.url)))
            if len(found) == 4 and all(w.stream_port for w in found.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"4 workers did not register: {found}")
            for worker in workers:
                worker.check_alive()
            time.sleep(0.5)
        config = {"workers": [f"{w.address.rsplit(':', 1)[0]}:{w.stream_port}"
                              for w in found.values()],
                  "prompt": prompt_token_ids(), "max_tokens": 32}
        for number in range(1, args.rounds + 1):
            rows += run_round(home, number, ports, config, systems, args.granian_args.split(),
                              workers)
    finally:
        stop_all(workers, timeout_s=30)
        redis.stop()
    print_table(rows)
    report("asgi_servers", figures_of(rows), {
        "command": "python -m bench.asgi_servers " + " ".join(argv), "started": started,
        "ports": ports, "rows": rows, "load_average_at_end": load_average(),
        "granian_args": args.granian_args,
        "versions": versions,
        "topology": "4 mock decode workers (0 ms steps, one process each) on one private "
                    "Redis, no router; each server in its own process in turn, the app "
                    "relaying to the workers' token streams; the peer's loadgen.py, streamed "
                    "chat, ~100-token prompts, 32 output tokens; all on this machine's cores"})


if __name__ == "__main__":
    main()
