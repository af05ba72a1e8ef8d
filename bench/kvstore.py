"""KV-store benchmark: ``python -m bench.kvstore`` (``make bench-kvstore``).

Starts a private Redis and a real ``python -m services.kvstore`` process, then measures, each
against a baseline measured in the same run on the same bytes:
same-host put/get of ~64 MiB of blocks vs a plain memcpy; nvme put (fsynced) vs one sequential
write+fsync; the remote path (gRPC on loopback, arena disabled) vs a naive single-stream
4 MiB-message grpc.aio transfer; Lookup of a 64-block chain (p99, including Redis).
Blocks are SmolLM2-135M KV blocks: 128 tokens x 23,040 B/token (bf16) = 2,949,120 B.
Prints a table and writes bench/results/kvstore.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np

from tandem.kvclient import KVClient, KVClientSettings
from tandem.redis_local import PrivateRedis, free_port
from tandem.v1 import common_pb2, kvstore_pb2

BLOCK_BYTES = 128 * 23_040
BLOCKS = 23  # 67.8 MB ~ 64.7 MiB
ROUNDS = 5
NAIVE_MESSAGE = 4 << 20
RESULTS = Path(__file__).parent / "results" / "kvstore.json"
_OPTIONS = [("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]


def _hashes(tag: str, count: int) -> list[bytes]:
    return [hashlib.blake2b(f"{tag}:{i}".encode(), digest_size=16).digest() for i in range(count)]


def _median_time(samples: list[float]) -> float:
    return statistics.median(samples)


# --- the naive baseline server (a subprocess, like the store) -----------------------------------
async def _naive_server(port: int) -> None:
    sink = bytearray(BLOCKS * BLOCK_BYTES)
    source = np.random.default_rng(1).integers(0, 255, BLOCKS * BLOCK_BYTES, np.uint8).tobytes()

    async def upload(requests: AsyncIterator[kvstore_pb2.PutRequest],
                     context: object) -> kvstore_pb2.PutResponse:
        offset = 0
        async for request in requests:
            sink[offset:offset + len(request.data)] = request.data
            offset += len(request.data)
        return kvstore_pb2.PutResponse(stored=offset // BLOCK_BYTES)

    async def download(request: kvstore_pb2.GetRequest,
                       context: object) -> AsyncIterator[kvstore_pb2.GetResponse]:
        view = memoryview(source)
        for offset in range(0, len(source), NAIVE_MESSAGE):
            yield kvstore_pb2.GetResponse(data=bytes(view[offset:offset + NAIVE_MESSAGE]))

    server = grpc.aio.server(options=_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Naive", {
        "Upload": grpc.stream_unary_rpc_method_handler(
            upload, request_deserializer=kvstore_pb2.PutRequest.FromString,
            response_serializer=kvstore_pb2.PutResponse.SerializeToString),
        "Download": grpc.unary_stream_rpc_method_handler(
            download, request_deserializer=kvstore_pb2.GetRequest.FromString,
            response_serializer=kvstore_pb2.GetResponse.SerializeToString),
    }),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _naive_transfer(port: int, payload: bytes) -> tuple[float, float]:
    """Seconds of one upload and one download of ``payload`` in 4 MiB messages, one stream."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
        await channel.channel_ready()
        upload = channel.stream_unary(
            "/bench.Naive/Upload", request_serializer=kvstore_pb2.PutRequest.SerializeToString,
            response_deserializer=kvstore_pb2.PutResponse.FromString)
        download = channel.unary_stream(
            "/bench.Naive/Download", request_serializer=kvstore_pb2.GetRequest.SerializeToString,
            response_deserializer=kvstore_pb2.GetResponse.FromString)
        view = memoryview(payload)

        async def messages() -> AsyncIterator[kvstore_pb2.PutRequest]:
            for offset in range(0, len(payload), NAIVE_MESSAGE):
                yield kvstore_pb2.PutRequest(data=bytes(view[offset:offset + NAIVE_MESSAGE]))

        ups, downs = [], []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            await upload(messages())
            ups.append(time.perf_counter() - start)
            sink = bytearray(len(payload))
            start = time.perf_counter()
            offset = 0
            async for reply in download(kvstore_pb2.GetRequest()):
                sink[offset:offset + len(reply.data)] = reply.data
                offset += len(reply.data)
            downs.append(time.perf_counter() - start)
        return _median_time(ups), _median_time(downs)


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    async def ready() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("server exited during start")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await asyncio.wait_for(channel.channel_ready(), 0.5)
                    return
                except TimeoutError:
                    pass
        raise RuntimeError("server did not start")

    asyncio.run(ready())


async def _serving(address: str, timeout_s: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the store never reported SERVING")


# --- measurements -------------------------------------------------------------------------------
async def measure(address: str, naive_port: int, nvme_dir: str) -> list[dict[str, object]]:
    await _serving(address)
    rng = np.random.default_rng(0)
    payloads = [rng.integers(0, 255, BLOCK_BYTES, np.uint8).tobytes() for _ in range(BLOCKS)]
    total = BLOCKS * BLOCK_BYTES
    dest = [bytearray(BLOCK_BYTES) for _ in range(BLOCKS)]
    for buffer in dest:  # pre-fault the destination like the arena is
        buffer[:] = payloads[0]
    figures: list[dict[str, object]] = []

    def memcpy_time() -> float:
        samples = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for buffer, payload in zip(dest, payloads, strict=True):
                memoryview(buffer)[:] = payload
            samples.append(time.perf_counter() - start)
        return _median_time(samples)

    def figure(name: str, seconds: float, base_seconds: float, base_name: str,
               target: float) -> None:
        value, base = total / seconds / 1e9, total / base_seconds / 1e9
        figures.append({"figure": name, "value": round(value, 3), "unit": "GB/s",
                        "baseline": round(base, 3), "baseline_name": base_name,
                        "ratio": round(value / base, 3), "target": f">= {target}",
                        "met": value / base >= target, "bytes": total})

    # same host: arena put + get
    async with KVClient(address, KVClientSettings(same_host=True)) as client:
        assert client.same_host and client.arena_view is not None
        puts, gets = [], []
        for round_ in range(ROUNDS):
            hashes = _hashes(f"local-{round_}", BLOCKS)
            start = time.perf_counter()
            result = await client.put(hashes, payloads)
            puts.append(time.perf_counter() - start)
            assert result.stored == BLOCKS, result
            start = time.perf_counter()
            got = await client.get(hashes, into=dest)
            gets.append(time.perf_counter() - start)
            assert len(got) == BLOCKS and bytes(got[-1]) == payloads[-1]
        base = memcpy_time()
        figure("same-host put (cxl arena)", _median_time(puts), base, "memcpy", 0.5)
        figure("same-host get (cxl arena, checksum verified)", _median_time(gets), base,
               "memcpy", 0.5)

        # nvme: durable put vs one sequential write + fsync of the same bytes
        nvme_puts, plain = [], []
        for round_ in range(3):
            hashes = _hashes(f"nvme-{round_}", BLOCKS)
            start = time.perf_counter()
            result = await client.put(hashes, payloads, tier=common_pb2.STORAGE_TIER_NVME)
            nvme_puts.append(time.perf_counter() - start)
            assert result.stored == BLOCKS, result
            path = os.path.join(nvme_dir, f"plain-{round_}.bin")
            plain.append(await asyncio.to_thread(_write_fsync, path, payloads))
            os.unlink(path)
        figure("nvme put (fsynced block files)", _median_time(nvme_puts), _median_time(plain),
               "write+fsync", 0.7)

        # Lookup of a 64-block chain
        chain = _hashes("lookup", 64)
        await client.put(chain, [payloads[0][:4096]] * 64)
        latencies = []
        for _ in range(200):
            await client.lookup(chain)
        for _ in range(2000):
            start = time.perf_counter()
            found, _ = await client.lookup(chain)
            latencies.append(time.perf_counter() - start)
            assert found == 64
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        figures.append({"figure": "Lookup 64-block chain p99 (gRPC + Redis)",
                        "value": round(p99 * 1e3, 3), "unit": "ms", "baseline": None,
                        "baseline_name": f"p50 {p50 * 1e3:.3f} ms",
                        "ratio": None, "target": "<= 1.0 ms", "met": p99 <= 1e-3})

    # remote path (arena disabled for the client)
    joined = b"".join(payloads)
    naive_up, naive_down = await _naive_transfer(naive_port, joined)
    async with KVClient(address, KVClientSettings(same_host=False)) as client:
        assert not client.same_host
        ups, downs = [], []
        for round_ in range(ROUNDS):
            hashes = _hashes(f"remote-{round_}", BLOCKS)
            start = time.perf_counter()
            result = await client.put(hashes, payloads)
            ups.append(time.perf_counter() - start)
            assert result.stored == BLOCKS, result
            start = time.perf_counter()
            got = await client.get(hashes, into=dest)
            downs.append(time.perf_counter() - start)
            assert len(got) == BLOCKS and bytes(got[3]) == payloads[3]
    figure("remote put (gRPC streams)", _median_time(ups), naive_up,
           "naive 1-stream 4 MiB grpc.aio upload", 2.0)
    figure("remote get (gRPC streams)", _median_time(downs), naive_down,
           "naive 1-stream 4 MiB grpc.aio download", 2.0)
    return figures


def _write_fsync(path: str, payloads: list[bytes]) -> float:
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as handle:
        for payload in payloads:
            handle.write(payload)
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def print_table(figures: list[dict[str, object]]) -> None:
    print(f"{'figure':46} {'value':>10} {'baseline':>10} {'ratio':>7} {'target':>10}  met")
    for f in figures:
        value = f"{f['value']} {f['unit']}"
        base = f"{f['baseline']}" if f["baseline"] is not None else str(f["baseline_name"])
        ratio = f"{f['ratio']}" if f["ratio"] is not None else "-"
        print(f"{f['figure']:46} {value:>10} {base:>10} {ratio:>7} {f['target']!s:>10}  "
              f"{'yes' if f['met'] else 'NO'}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--naive-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.naive_server:
        import uvloop

        uvloop.run(_naive_server(args.naive_server))
        return
    redis = PrivateRedis()
    workdir = tempfile.mkdtemp(prefix="tandem-bench-kv-", dir="/var/tmp")
    arena = f"/dev/shm/tandem-bench-kv-{os.getpid()}.arena"
    port, naive_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    store = subprocess.Popen(
        [sys.executable, "-m", "services.kvstore", "--port", str(port), "--redis-url", redis.url,
         "--cxl-path", arena, "--cxl-capacity-bytes", str(1 << 30), "--nvme-path",
         os.path.join(workdir, "nvme"), "--log-level", "warning"], env=env)
    naive = subprocess.Popen([sys.executable, "-m", "bench.kvstore", "--naive-server",
                              str(naive_port)], env=env)
    try:
        _wait_port(naive_port, naive)
        import uvloop

        figures = uvloop.run(measure(f"127.0.0.1:{port}", naive_port, workdir))
    finally:
        for process in (store, naive):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
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
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figures}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
