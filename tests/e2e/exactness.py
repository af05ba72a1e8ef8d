"""Migration token exactness with the real engine: a launched system of two vLLM decode workers
(``tandem.launch``, supervision on); each trial streams a greedy chat completion, SIGKILLs the
decode worker serving it after a few chunks (the router migrates the stream to the other one),
and compares the client's whole text with the undisturbed run of the same request. bf16 may
flip a near-tie when the batch changes, so a trial may differ without a bug: the issue's target
is 9 of 10. The killed worker is restarted by the launcher before the next trial. Used by
``tests/e2e/test_migration_exactness.py`` (a few trials) and ``bench.faults --vllm-trials``
(the full 10); both hold ``/tmp/vllm.lock`` around it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import orjson
import redis

from tandem.discovery import WorkerInfo, worker_key
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceProcess
from tests.integration.leaks import scrape

MODEL = "SmolLM2-135M-Instruct"
QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe the water cycle to a child.",
    "What makes a good cup of tea? Give details.",
    "Tell me about the history of the printing press.",
    "Describe a walk through a forest in autumn.",
    "Explain why the sky is blue.",
    "Write a letter to a friend about a trip to the sea.",
    "How do bees make honey?",
    "Describe how bread is baked.",
]
MAX_TOKENS = 64
KILL_AFTER_CHUNKS = 8
STARTUP_S = 400.0


@dataclasses.dataclass(frozen=True)
class Trial:
    question: str
    undisturbed: str
    migrated: str
    killed: str
    """The worker SIGKILLed mid-stream."""

    @property
    def exact(self) -> bool:
        return self.migrated == self.undisturbed


class VllmFleet:
    """Two vLLM decode workers and the router, by the launcher (its own Redis)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.namespace = f"exact-{uuid.uuid4().hex[:8]}"
        self.launcher = ServiceProcess("launch", "tandem.launch", [
            "--engine", "vllm", "--decode-workers", "2", "--prefill-workers", "0",
            "--kvstore", "false", "--namespace", self.namespace,
            "--http-port", str(free_port()), "--grpc-port", str(free_port()),
            "--run-dir", str(run_dir), "--restart-backoff-s", "0.2", "--max-restarts", "20",
            # float32: on a CPU with native bf16 (oneDNN kernels) the greedy choice flips near
            # ties when the batch or the cached prefix changes, migration or not (0-1 of 2
            # trials exact in bf16 on 2026-12-03); float32 separates the splice from that noise
            "--dtype", "float32"],
            log_path=run_dir / "launch.log")

    def start(self) -> VllmFleet:
        self.launcher.start().wait_ready(lambda: (self.run_dir / "system.json").exists(),
                                         STARTUP_S)
        return self

    def describe(self) -> dict[str, object]:
        return dict(json.loads((self.run_dir / "system.json").read_text()))

    @property
    def url(self) -> str:
        return str(self.describe()["router_http_url"])

    def registration(self, worker_id: str) -> WorkerInfo | None:
        with redis.Redis.from_url(str(self.describe()["redis_url"])) as client:
            raw = client.get(worker_key(self.namespace, worker_id))
        return None if raw is None else WorkerInfo.from_json(raw)  # type: ignore[arg-type]

    def serving(self) -> str:
        """The decode worker with a request running."""
        urls = self.describe()["metrics_urls"]
        assert isinstance(urls, list)
        for index, url in enumerate(urls[:2]):
            if scrape(str(url), "tandem_worker_running_requests") > 0:
                return f"decode-{index}"
        raise AssertionError("no decode worker runs the request")

    def kill(self, worker_id: str) -> None:
        pids = self.describe()["pids"]
        assert isinstance(pids, dict)
        os.kill(int(pids[worker_id]), signal.SIGKILL)

    def wait_back(self, worker_id: str, address: str) -> None:
        """Until the restarted ``worker_id`` serves (a new address, state serving)."""
        deadline = time.monotonic() + STARTUP_S
        while True:
            info = self.registration(worker_id)
            if info is not None and info.address != address and info.routable:
                return
            assert time.monotonic() < deadline, f"{worker_id} did not come back"
            time.sleep(0.5)

    def stop(self) -> None:
        self.launcher.stop(timeout_s=60)


def _body(question: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}


async def _stream(client: httpx.AsyncClient, question: str,
                  fleet: VllmFleet | None = None) -> tuple[str, str]:
    """The stream's text; with ``fleet``, the worker serving it is SIGKILLed after
    ``KILL_AFTER_CHUNKS`` chunks (returned with the text)."""
    texts: list[str] = []
    killed = ""
    async with client.stream("POST", "/v1/chat/completions", json=_body(question)) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[len("data: "):])
            assert "error" not in chunk, chunk
            texts.extend(c["delta"].get("content") or "" for c in chunk["choices"])
            if fleet is not None and not killed and len(texts) == KILL_AFTER_CHUNKS:
                killed = await asyncio.to_thread(fleet.serving)
                fleet.kill(killed)
    return "".join(texts), killed


async def trial(fleet: VllmFleet, question: str) -> Trial:
    async with httpx.AsyncClient(base_url=fleet.url, timeout=120) as client:
        undisturbed, _ = await _stream(client, question)
        before = {w: fleet.registration(w) for w in ("decode-0", "decode-1")}
        migrated, killed = await _stream(client, question, fleet)
    assert killed, "the stream ended before the kill"
    info = before[killed]
    assert info is not None
    await asyncio.to_thread(fleet.wait_back, killed, info.address)
    return Trial(question, undisturbed, migrated, killed)


async def trials(fleet: VllmFleet, count: int) -> list[Trial]:
    return [await trial(fleet, QUESTIONS[i % len(QUESTIONS)]) for i in range(count)]
