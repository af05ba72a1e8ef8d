"""``--processes N``: N router processes on one port under a supervisor, against a real decode
worker over gRPC and a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tandem.redis_local import free_port
from tests.integration.system import InProcessWorker, start_decode_worker

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def listeners(port: int) -> int:
    """Sockets in LISTEN on ``port``."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


async def chat(port: int) -> int:
    """One streamed chat completion on a new connection; its token count."""
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
            "stream": True, "stream_options": {"include_usage": True}})
        assert reply.status_code == 200, reply.text
        return int(reply.text.count('"completion_tokens":5'))


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[tuple[str, InProcessWorker]]:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = await start_decode_worker(redis_url, namespace, "decode-0", decode_ms=0.5)
    yield namespace, worker
    await worker.shutdown()


async def test_processes_share_the_port_and_one_dying_is_replaced(
    redis_url: str, worker: tuple[str, InProcessWorker]
) -> None:
    namespace, _ = worker
    port = free_port()
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.router", "--redis-url", redis_url,
        "--namespace", namespace, "--http-port", str(port), "--grpc-port", "0",
        "--processes", "2", "--discovery-interval-s", "0.1", "--drain-grace-s", "1",
        "--log-level", "warning",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    try:
        async with asyncio.timeout(240):
            while listeners(port) < 2:
                assert supervisor.returncode is None, "the supervisor exited"
                await asyncio.sleep(0.2)
            first = children(supervisor.pid)
            assert len(first) == 2
            # Each process answers once its own canary went through the worker.
            for _ in range(20):
                while (await _health(port)) != 200:
                    await asyncio.sleep(0.1)
            assert [await chat(port) for _ in range(10)] == [1] * 10

            os.kill(first[0], signal.SIGKILL)
            # Once the dead process's socket is gone (connections already queued on it are
            # lost with it: SO_REUSEPORT), the survivor serves every new connection...
            while listeners(port) != 1:
                await asyncio.sleep(0.01)
            assert [await chat(port) for _ in range(5)] == [1] * 5
            # ... and the supervisor starts a replacement that takes its share of the port.
            while len(children(supervisor.pid)) < 2 or listeners(port) < 2:
                await asyncio.sleep(0.2)
            assert first[0] not in children(supervisor.pid)
            assert first[1] in children(supervisor.pid)

        supervisor.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await supervisor.wait() == 0
        assert listeners(port) == 0
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()


async def _health(port: int) -> int:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code
    except httpx.TransportError:
        return 0


async def test_a_broken_configuration_stops_the_supervisor(redis_url: str) -> None:
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.router", "--redis-url", redis_url,
        "--http-port", str(free_port()), "--grpc-port", "0", "--processes", "2",
        "--model-dir", "/nonexistent/model", "--log-level", "warning",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        stderr=asyncio.subprocess.DEVNULL)
    async with asyncio.timeout(240):
        assert await supervisor.wait() == 1
