"""Nothing outlives its owner: a decode worker on the real engine (vLLM CPU build), SIGKILLed
while it generates, leaves no process behind. vLLM's engine core and its Worker (and the
multiprocessing helpers the worker started) are gone within seconds, although the worker ran no
cleanup at all; and its discovery lease lapses (``tandem.engines.owner``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from tandem.discovery import WorkerWatcher
from tandem.engines.owner import alive, descendants
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceProcess, grpc_serving
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e

GONE_WITHIN_S = 5.0
"""How long the worker's engine processes may outlive it."""
LEASE_TTL_S = 2.0


def title(pid: int) -> bytes:
    """The process's title (vLLM names its processes ``VLLM::EngineCore``, ``VLLM::Worker``)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except FileNotFoundError:
        return b"(gone)"


async def test_engine_processes_die_with_a_sigkilled_worker(redis_url: str,
                                                            tmp_path: Path) -> None:
    port, namespace = free_port(), f"owner-{uuid.uuid4().hex[:6]}"
    worker = ServiceProcess("decode", "services.decode", [
        "--engine", "vllm", "--port", str(port), "--redis-url", redis_url,
        "--namespace", namespace, "--lease-ttl-s", str(LEASE_TTL_S), "--log-level", "warning",
    ], log_path=tmp_path / "decode.log").start()
    redis = aioredis.Redis.from_url(redis_url)
    owned: list[int] = []
    try:
        await asyncio.to_thread(worker.wait_ready, lambda: grpc_serving(f"127.0.0.1:{port}"),
                                180)
        owned = descendants(worker.pid)
        titles = {title(pid) for pid in owned}
        assert any(b"EngineCore" in title for title in titles), titles
        assert any(b"Worker" in title for title in titles), titles
        assert set(await WorkerWatcher(redis, namespace).refresh())  # registered

        # The engine is busy generating when its owner dies.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = worker_pb2_grpc.DecodeServiceStub(channel).Generate(
                worker_pb2.GenerateRequest(
                    request_id="doomed", prompt_token_ids=list(range(100, 164)), model=MODEL,
                    sampling=common_pb2.SamplingParams(max_tokens=2000, ignore_eos=True)))
            async for _ in stream:
                break
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in stream:
                    pass
        await asyncio.to_thread(worker.process.wait, 10)  # type: ignore[union-attr]

        left = owned
        while left and time.monotonic() - killed < GONE_WITHIN_S:
            await asyncio.sleep(0.05)
            left = [pid for pid in left if alive(pid)]
        assert not left, [title(pid)[:60] for pid in left]

        # Its lease lapses: no router sends it anything once the TTL has passed.
        while set(await WorkerWatcher(redis, namespace).refresh()):
            assert time.monotonic() - killed < LEASE_TTL_S + 1.0
            await asyncio.sleep(0.1)
    finally:
        worker.kill()
        for pid in owned:  # never leave an orphan behind, even when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await redis.aclose()
