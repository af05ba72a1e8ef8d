"""KV-store benchmark: ``python -m bench.kvstore`` (``make bench-kvstore``).

Starts a private Redis and a real ``python -m services.kvstore`` process, then measures, each
against a baseline measured in the same run on the same bytes:
same-host put/get of ~64 MiB of blocks vs a plain memcpy of the same bytes in the same round
(the ratio is the median of the per-round ratios); nvme put (fsynced; buffered and
O_DIRECT) vs one sequential write+fsync, and the read right after each; the remote path
(loopback, arena disabled) over the store's data plane (the product's remote path) and over
the gRPC fallback, both vs a naive single-stream 4 MiB-message grpc.aio transfer, with a plain
TCP socket as a reference ceiling, the CPU time per byte of both ends, and baseline and
candidates alternating within every round (the machine is shared: each ratio is the median of
the per-round ratios); Lookup of a 64-block chain (p99) over the data plane and over gRPC
against a bare unary gRPC call (Describe), alternating in the same run.
Blocks are SmolLM2-135M KV blocks: 128 tokens x 23,040 B/token (bf16) = 2,949,120 B.
Prints a table and writes bench/results/kvstore.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from bench import kvstore_baselines as baselines
from services.kvstore.settings import KVStoreSettings
from tandem.kvclient import KVClient, KVClientSettings
from tandem.redis_local import PrivateRedis, free_port
from tandem.service.groups import ControlPlaneSettings
from tandem.service.settings import flags_of
from tandem.service.spawn import ServiceProcess, grpc_serving, stop_all
from tandem.telemetry import TelemetrySettings
from tandem.v1 import common_pb2, kvstore_pb2

BLOCK_BYTES = 128 * 23_040
BLOCKS = 23  # 67.8 MB ~ 64.7 MiB
ROUNDS = 5
REMOTE_ROUNDS = 7
NVME_ROUNDS = 3
LOOKUPS = 3000
KEEP_FREED = 256 << 20
ARENA_BYTES = 2 << 30
"""Room for every block the run writes (~1.5 GB) under the high watermark: no eviction or
demotion to disk runs in the middle of a measurement."""
RESULTS = Path(__file__).parent / "results" / "kvstore.json"
Figure = dict[str, object]


def _hashes(tag: str, count: int) -> list[bytes]:
    return [hashlib.blake2b(f"{tag}:{i}".encode(), digest_size=16).digest() for i in range(count)]


class Bench:
    def __init__(self, address: str, store_pid: int, naive_port: int, raw_port: int,
                 naive_pid: int, nvme_dir: str) -> None:
        self.address, self.store_pid, self.nvme_dir = address, store_pid, nvme_dir
        self.naive_port, self.raw_port, self.naive_pid = naive_port, raw_port, naive_pid
        rng = np.random.default_rng(0)
        self.payloads = [rng.integers(0, 255, BLOCK_BYTES, np.uint8).tobytes()
                         for _ in range(BLOCKS)]
        self.total = BLOCKS * BLOCK_BYTES
        self.dest = [bytearray(BLOCK_BYTES) for _ in range(BLOCKS)]
        for buffer in self.dest:  # pre-fault the destination like the arena is
            buffer[:] = self.payloads[0]
        self.figures: list[Figure] = []

    def rate(self, seconds: float) -> float:
        return self.total / seconds / 1e9

    def figure(self, name: str, seconds: float, base_seconds: float, base_name: str,
               target: float | None, ratio: float | None = None, **extra: object) -> None:
        value, base = self.rate(seconds), self.rate(base_seconds)
        ratio = value / base if ratio is None else ratio
        self.figures.append({
            "figure": name, "value": round(value, 3), "unit": "GB/s", "baseline": round(base, 3),
            "baseline_name": base_name, "ratio": round(ratio, 3),
            "target": f">= {target}" if target is not None else None,
            "met": ratio >= target if target is not None else None, "bytes": self.total,
            **extra})

    def memcpy_once(self) -> float:
        start = time.perf_counter()
        for buffer, payload in zip(self.dest, self.payloads, strict=True):
            memoryview(buffer)[:] = payload
        return time.perf_counter() - start

    # --- same host ----------------------------------------------------------------------------
    async def same_host(self) -> None:
        async with KVClient(self.address, KVClientSettings(same_host=True)) as client:
            assert client.same_host and client.arena_view is not None
            puts, gets, copies = [], [], []
            for round_ in range(ROUNDS):  # memcpy, put and get back to back in every round
                copies.append(self.memcpy_once())
                hashes = _hashes(f"local-{round_}", BLOCKS)
                start = time.perf_counter()
                result = await client.put(hashes, self.payloads)
                puts.append(time.perf_counter() - start)
                assert result.stored == BLOCKS, result
                start = time.perf_counter()
                got = await client.get(hashes, into=self.dest)
                gets.append(time.perf_counter() - start)
                assert len(got) == BLOCKS and bytes(got[-1]) == self.payloads[-1]
            base = statistics.median(copies)
            self.figure("same-host put (cxl arena)", statistics.median(puts), base, "memcpy", 0.5,
                        statistics.median(c / p for c, p in zip(copies, puts, strict=True)))
            self.figure("same-host get (cxl arena, checksum verified)", statistics.median(gets),
                        base, "memcpy", 0.5,
                        statistics.median(c / g for c, g in zip(copies, gets, strict=True)))
            async with KVClient(self.address, KVClientSettings(force_grpc=True)) as over_grpc:
                await self.lookup(client, over_grpc)
        for direct in (False, True):
            await self.nvme(direct)

    async def nvme(self, direct: bool) -> None:
        """Durable nvme put vs one sequential write + fsync of the same bytes; then the read
        right after each (the plain file read back vs the block files)."""
        settings = KVClientSettings(same_host=True, direct_io=direct)
        label = "O_DIRECT" if direct else "buffered"
        async with KVClient(self.address, settings) as client:
            puts, plain, gets, plain_reads = [], [], [], []
            for round_ in range(NVME_ROUNDS):
                hashes = _hashes(f"nvme-{label}-{round_}", BLOCKS)
                start = time.perf_counter()
                result = await client.put(hashes, self.payloads,
                                          tier=common_pb2.STORAGE_TIER_NVME)
                puts.append(time.perf_counter() - start)
                assert result.stored == BLOCKS, result
                start = time.perf_counter()
                got = await client.get(hashes, into=self.dest)
                gets.append(time.perf_counter() - start)
                assert len(got) == BLOCKS and bytes(got[5]) == self.payloads[5]
                path = os.path.join(self.nvme_dir, f"plain-{round_}.bin")
                plain.append(await asyncio.to_thread(_write_fsync, path, self.payloads))
                plain_reads.append(await asyncio.to_thread(_read_back, path, self.dest))
                os.unlink(path)
        self.figure(f"nvme put, {label} (fsynced block files)", statistics.median(puts),
                    statistics.median(plain), "write+fsync", 0.7)
        self.figure(f"nvme get right after a {label} put", statistics.median(gets),
                    statistics.median(plain_reads), "read back the plain file", None)

    async def lookup(self, client: KVClient, over_grpc: KVClient) -> None:
        """Lookup of a 64-block chain over the data plane and over gRPC, alternating with a bare
        unary gRPC call (Describe) on the same channel."""
        assert client.data_plane_up and not over_grpc.data_plane_up
        chain = _hashes("lookup", 64)
        await client.put(chain, [self.payloads[0][:4096]] * 64)
        describe = kvstore_pb2.DescribeRequest()
        samples: dict[str, list[float]] = {"dataplane": [], "grpc": [], "unary": []}

        async def timed(name: str, action: Awaitable[object]) -> None:
            start = time.perf_counter()
            reply = await action
            samples[name].append(time.perf_counter() - start)
            assert name == "unary" or reply == (64, [common_pb2.STORAGE_TIER_CXL] * 64)

        for round_ in range(LOOKUPS + 200):  # the first 200 warm up
            await timed("dataplane", client.lookup(chain))
            await timed("grpc", over_grpc.lookup(chain))
            await timed("unary", client.stub.Describe(describe))
            if round_ == 199:
                samples = {name: [] for name in samples}
        floor_p99 = _percentile(samples["unary"], 0.99)
        for name, label in (("dataplane", "data plane"), ("grpc", "gRPC fallback")):
            p99 = _percentile(samples[name], 0.99)
            self.figures.append({
                "figure": f"Lookup 64-block chain p99 ({label} -> store index)",
                "value": round(p99 * 1e3, 3), "unit": "ms",
                "baseline": round(floor_p99 * 1e3, 3),
                "baseline_name": "bare unary gRPC call (Describe) p99",
                "ratio": round(p99 / floor_p99, 3),
                "target": "<= 1.0 ms" if name == "dataplane" else None,
                "met": p99 <= 1e-3 if name == "dataplane" else None,
                "p50_ms": round(_percentile(samples[name], 0.5) * 1e3, 3),
                "p999_ms": round(_percentile(samples[name], 0.999) * 1e3, 3),
                "baseline_p50_ms": round(_percentile(samples["unary"], 0.5) * 1e3, 3)})

    # --- remote -------------------------------------------------------------------------------
    async def remote(self) -> None:
        joined = b"".join(self.payloads)
        sink = bytearray(self.total)
        naive, raw = baselines.Naive(self.naive_port), baselines.RawSocket(self.raw_port)
        await raw.connect()
        settings = KVClientSettings(same_host=False, malloc_keep_bytes=KEEP_FREED)
        fallback = dataclasses.replace(settings, force_grpc=True)
        samples: dict[str, list[tuple[float, float, float]]] = {}
        puts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        gets: list[tuple[str, Callable[[], Awaitable[None]]]] = []

        async def timed(name: str, pid: int, action: Callable[[], Awaitable[object]]) -> None:
            cpu_client, cpu_server = baselines.cpu_seconds(), baselines.cpu_seconds(pid)
            start = time.perf_counter()
            await action()
            seconds = time.perf_counter() - start
            samples.setdefault(name, []).append((
                seconds, baselines.cpu_seconds() - cpu_client,
                baselines.cpu_seconds(pid) - cpu_server))

        async with KVClient(self.address, settings) as client, \
                KVClient(self.address, fallback) as over_grpc:
            assert not client.same_host and client.data_plane_up
            assert not over_grpc.data_plane_up
            for round_ in range(REMOTE_ROUNDS + 1):  # round 0 warms every path up
                for path, kv in (("dataplane", client), ("grpc", over_grpc)):
                    hashes = _hashes(f"remote-{path}-{round_}", BLOCKS)

                    async def put(kv: KVClient = kv, hashes: list[bytes] = hashes) -> None:
                        result = await kv.put(hashes, self.payloads)
                        assert result.stored == BLOCKS, result

                    async def get(kv: KVClient = kv, hashes: list[bytes] = hashes) -> None:
                        got = await kv.get(hashes, into=self.dest)
                        assert len(got) == BLOCKS and bytes(got[3]) == self.payloads[3]

                    puts.append((path, put))
                    gets.append((path, get))
                await timed("naive put", self.naive_pid, lambda: naive.put(joined))
                for path, action in puts:
                    await timed(f"{path} put", self.store_pid, action)
                await timed("raw put", self.naive_pid, lambda: raw.put(joined))
                await timed("naive get", self.naive_pid, lambda: naive.get(sink))
                for path, action in gets:
                    await timed(f"{path} get", self.store_pid, action)
                await timed("raw get", self.naive_pid, lambda: raw.get(sink))
                puts.clear()
                gets.clear()
                if round_ == 0:
                    samples.clear()
        await naive.close()
        await raw.close()
        for kind in ("put", "get"):
            base, ref = samples[f"naive {kind}"], samples[f"raw {kind}"]
            direction = "upload" if kind == "put" else "download"
            naive_name = f"naive 1-stream 4 MiB grpc.aio {direction}"
            for path, label, target in (("dataplane", "data plane", 2.0),
                                        ("grpc", "gRPC fallback", None)):
                ours = samples[f"{path} {kind}"]
                self.figure(f"remote {kind} ({label})", _median(ours, 0), _median(base, 0),
                            naive_name, target, _paired_ratio(base, ours), **_cpu(ours, base))
            self.figure(f"reference: plain TCP socket {kind} (not a product path)",
                        _median(ref, 0), _median(base, 0), naive_name, None,
                        _paired_ratio(base, ref), **_cpu(ref, base))


def _median(samples: list[tuple[float, float, float]], index: int) -> float:
    return statistics.median(sample[index] for sample in samples)


def _paired_ratio(base: list[tuple[float, float, float]],
                  ours: list[tuple[float, float, float]]) -> float:
    """Median over rounds of baseline time / candidate time (measured back to back)."""
    return statistics.median(b[0] / o[0] for b, o in zip(base, ours, strict=True))


def _cpu(ours: list[tuple[float, float, float]],
         base: list[tuple[float, float, float]]) -> dict[str, object]:
    """CPU nanoseconds per byte moved, client and server process (all threads)."""
    def per_byte(samples: list[tuple[float, float, float]], index: int) -> float:
        return round(statistics.mean(s[index] for s in samples) / (BLOCKS * BLOCK_BYTES) * 1e9,
                     2)

    return {"cpu_ns_per_byte": {"client": per_byte(ours, 1), "server": per_byte(ours, 2)},
            "baseline_cpu_ns_per_byte": {"client": per_byte(base, 1),
                                         "server": per_byte(base, 2)}}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _write_fsync(path: str, payloads: list[bytes]) -> float:
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        for payload in payloads:
            handle.write(payload)
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def _read_back(path: str, dest: list[bytearray]) -> float:
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        for buffer in dest:
            handle.readinto(buffer)
    return time.perf_counter() - start


async def measure(address: str, store_pid: int, naive_port: int, raw_port: int,
                  naive_pid: int, nvme_dir: str) -> list[Figure]:
    await baselines.wait_ready(naive_port)
    bench = Bench(address, store_pid, naive_port, raw_port, naive_pid, nvme_dir)
    await bench.same_host()
    await bench.remote()
    return bench.figures


def print_table(figures: list[Figure]) -> None:
    print(f"{'figure':56} {'value':>11} {'baseline':>9} {'ratio':>6} {'target':>10}  met")
    for f in figures:
        value = f"{f['value']} {f['unit']}"
        ratio = f"{f['ratio']}" if f["ratio"] is not None else "-"
        met = "-" if f["met"] is None else ("yes" if f["met"] else "NO")
        print(f"{f['figure']:56} {value:>11} {f['baseline']!s:>9} {ratio:>6} "
              f"{f['target'] or '-'!s:>10}  {met}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--naive-server", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import uvloop

    if args.naive_server:
        grpc_port, raw_port = args.naive_server
        uvloop.run(baselines.serve(grpc_port, raw_port, BLOCKS * BLOCK_BYTES))
        return
    redis = PrivateRedis()
    workdir = tempfile.mkdtemp(prefix="tandem-bench-kv-", dir="/var/tmp")
    arena = f"/dev/shm/tandem-bench-kv-{os.getpid()}.arena"
    port, naive_port, raw_port = free_port(), free_port(), free_port()
    store = ServiceProcess("kvstore", "services.kvstore", flags_of(KVStoreSettings(
        port=port, control=ControlPlaneSettings(redis.url), cxl_path=arena,
        cxl_capacity_bytes=ARENA_BYTES, nvme_path=os.path.join(workdir, "nvme"),
        telemetry=TelemetrySettings(log_level="warning"))))
    naive = ServiceProcess("naive server", "bench.kvstore",
                           ["--naive-server", str(naive_port), str(raw_port)])
    try:
        store.start().wait_ready(lambda: grpc_serving(f"127.0.0.1:{port}"), timeout_s=60)
        naive.start()
        figures = uvloop.run(measure(f"127.0.0.1:{port}", store.pid, naive_port, raw_port,
                                     naive.pid, workdir))
    finally:
        stop_all([store, naive], timeout_s=10)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if os.path.exists(arena):
            os.unlink(arena)
    print_table(figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "kvstore", "block_bytes": BLOCK_BYTES, "blocks": BLOCKS,
        "block_payload": "SmolLM2-135M KV, 128 tokens x 23,040 B/token (bf16)",
        "command": ".venv/bin/python -m bench.kvstore", "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figures}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
