"""What TLS costs: the KV store's data plane throughput, and the router's CPU per request.

    python -m bench.tls_cost [--requests 400] [--concurrency 8]

1. KV data plane: two KV store processes (plaintext, and mutual TLS with a dev CA's
   certificates), the same remote put and get of ``bench.kvstore``'s 23 blocks of 2.9 MB
   (SmolLM2-135M, 128 tokens) over each, rounds interleaved; GB/s per path, median of rounds.
2. Router hot path: the local system (``tandem.launch``, mock decode worker at 0 ms steps, no
   KV store) once in plaintext and once with ``--tls-dir`` (HTTPS in, mTLS to the worker);
   streamed chat completions (32 tokens) on keep-alive connections from a closed loop; the
   router process's CPU seconds per request from /proc.

Every ratio is TLS over plaintext, measured in the same run. The load generator shares the
machine's cores with everything it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import shutil
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.kvstore import BLOCK_BYTES, BLOCKS
from bench.kvstore_baselines import cpu_seconds
from services.kvstore.settings import KVStoreSettings
from tandem.kvclient import KVClient, KVClientSettings
from tandem.redis_local import PrivateRedis, free_port
from tandem.security.devca import make_all
from tandem.service.groups import ControlPlaneSettings, GrpcSettings
from tandem.service.settings import flags_of
from tandem.service.spawn import ServiceProcess, grpc_serving, stop_all, wait_ready
from tandem.service.tls import TlsSettings
from tandem.telemetry import TelemetrySettings

RESULTS = Path(__file__).parent / "results" / "tls_cost.json"
KV_ROUNDS = 5
MODEL = "SmolLM2-135M-Instruct"


def _tls(certs: Path, name: str) -> TlsSettings:
    return TlsSettings(str(certs / f"{name}.pem"), str(certs / f"{name}-key.pem"),
                       str(certs / "ca.pem"))


async def _kv_rounds(addresses: dict[str, tuple[str, TlsSettings]]) -> dict[str, object]:
    payloads = [hashlib.blake2b(str(i).encode()).digest() * (BLOCK_BYTES // 64)
                for i in range(BLOCKS)]
    total = sum(len(p) for p in payloads)
    dest = [bytearray(BLOCK_BYTES) for _ in range(BLOCKS)]
    samples: dict[str, list[float]] = {}
    clients = {path: KVClient(address, KVClientSettings(same_host=False, tls=tls))
               for path, (address, tls) in addresses.items()}
    for client in clients.values():
        await client.connect()
        assert client.data_plane_up
    try:
        for round_ in range(KV_ROUNDS + 1):  # round 0 warms up
            for path, client in clients.items():
                hashes = [hashlib.blake2b(f"{path}-{round_}-{i}".encode(),
                                          digest_size=16).digest() for i in range(BLOCKS)]
                start = time.perf_counter()
                result = await client.put(hashes, payloads)
                put_s = time.perf_counter() - start
                assert result.stored == BLOCKS, result
                start = time.perf_counter()
                got = await client.get(hashes, into=dest)
                get_s = time.perf_counter() - start
                assert len(got) == BLOCKS and bytes(got[3]) == payloads[3]
                if round_:
                    samples.setdefault(f"{path} put", []).append(total / put_s / 1e9)
                    samples.setdefault(f"{path} get", []).append(total / get_s / 1e9)
    finally:
        for client in clients.values():
            await client.close()
    figures: dict[str, object] = {name: round(statistics.median(v), 3)
                                  for name, v in samples.items()}
    for op in ("put", "get"):
        figures[f"{op} tls/plaintext"] = round(
            statistics.median(samples[f"tls {op}"]) / statistics.median(samples[f"plain {op}"]),
            3)
    return figures


def kv_data_plane(certs: Path) -> dict[str, object]:
    redis = PrivateRedis()
    workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-tls-", dir="/var/tmp"))
    stores, addresses, arenas = [], {}, []
    try:
        for path, tls in (("plain", TlsSettings()), ("tls", _tls(certs, "kvstore"))):
            port = free_port()
            arena = f"/dev/shm/tandem-bench-tls-{os.getpid()}-{path}.arena"
            arenas.append(arena)
            store = ServiceProcess(f"kvstore-{path}", "services.kvstore", flags_of(
                KVStoreSettings(port=port, control=ControlPlaneSettings(
                    redis.url, namespace=f"bench-tls-{path}"), cxl_path=arena,
                    cxl_capacity_bytes=1 << 30, nvme_path=str(workdir / path),
                    grpc=GrpcSettings(tls=tls),
                    telemetry=TelemetrySettings(log_level="warning")))).start()
            stores.append(store)
            client_tls = _tls(certs, "client") if tls.enabled else tls
            probe = GrpcSettings(tls=client_tls)
            address = f"127.0.0.1:{port}"
            store.wait_ready(functools.partial(grpc_serving, address, grpc_settings=probe),
                             timeout_s=60)
            addresses[path] = (address, client_tls)
        return asyncio.run(_kv_rounds(addresses))
    finally:
        stop_all(stores, timeout_s=10)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        for arena in arenas:
            Path(arena).unlink(missing_ok=True)


async def _load(url: str, verify: ssl.SSLContext | bool, requests: int,
                concurrency: int) -> float:
    """Runs ``requests`` streamed completions; returns the seconds taken."""
    counter = iter(range(requests))
    body = {"model": MODEL, "max_tokens": 32, "stream": True,
            "messages": [{"role": "user", "content": "tell me a story"}]}

    async def loop(client: httpx.AsyncClient) -> None:
        for number in counter:
            body["messages"][0]["content"] = f"{number} tell me a story"  # type: ignore[index]
            async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                assert reply.status_code == 200
                async for _ in reply.aiter_bytes():
                    pass

    async with httpx.AsyncClient(base_url=url, verify=verify, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(loop(client) for _ in range(concurrency)))
        return time.perf_counter() - start


def router_cpu(certs: Path | None, requests: int, concurrency: int) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-tls-run-"))
    args = ["--engine", "mock", "--prefill-workers", "0", "--decode-workers", "1",
            "--kvstore", "false", "--mock-decode-ms", "0", "--http-port", str(free_port()),
            "--grpc-port", str(free_port()), "--run-dir", str(run_dir),
            "--namespace", f"bench-tls-{os.getpid()}"]
    if certs is not None:
        args += ["--tls-dir", str(certs)]
    launch = ServiceProcess("launch", "tandem.launch", args, log_path=run_dir / "launch.log")
    launch.start()
    try:
        wait_ready([launch], lambda: (run_dir / "system.json").exists(), 120, "not up")
        info = json.loads((run_dir / "system.json").read_text())
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(certs / "ca.pem"))
                                         if certs is not None else False)
        router = int(info["pids"]["router"])
        asyncio.run(_load(info["router_http_url"], verify, 50, concurrency))  # warm-up
        before = cpu_seconds(router)
        seconds = asyncio.run(_load(info["router_http_url"], verify, requests, concurrency))
        used = cpu_seconds(router) - before
    finally:
        launch.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"router_cpu_ms_per_request": round(used / requests * 1e3, 3),
            "requests_per_s": round(requests / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    certs = Path(tempfile.mkdtemp(prefix="tandem-bench-certs-"))
    try:
        make_all(certs)
        kv = kv_data_plane(certs)
        plain = router_cpu(None, args.requests, args.concurrency)
        tls = router_cpu(certs, args.requests, args.concurrency)
    finally:
        shutil.rmtree(certs, ignore_errors=True)
    router = {"plaintext": plain, "tls": tls, "cpu tls/plaintext": round(
        tls["router_cpu_ms_per_request"] / plain["router_cpu_ms_per_request"], 3)}
    print(f"{'KV data plane (GB/s)':<28}{'plaintext':>12}{'TLS':>12}{'TLS/plain':>12}")
    for op in ("put", "get"):
        print(f"{'remote ' + op:<28}{kv[f'plain {op}']:>12}{kv[f'tls {op}']:>12}"
              f"{kv[f'{op} tls/plaintext']:>12}")
    print(f"{'router CPU ms/request':<28}{plain['router_cpu_ms_per_request']:>12}"
          f"{tls['router_cpu_ms_per_request']:>12}{router['cpu tls/plaintext']:>12}")
    print(f"{'router requests/s':<28}{plain['requests_per_s']:>12}{tls['requests_per_s']:>12}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "tls_cost", "command": ".venv/bin/python -m bench.tls_cost",
        "requests": args.requests, "concurrency": args.concurrency,
        "kv_block_bytes": BLOCK_BYTES, "kv_blocks": BLOCKS, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": {"kv_data_plane_gb_per_s": kv, "router": router}}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
