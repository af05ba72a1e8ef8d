"""Mid-stream migration: the decode worker serving a stream is a real process, SIGKILLed after
tokens reached the client; the router resumes the request on another decode worker and the
client sees one unbroken stream (or, past --max-migrations, an error event and [DONE])."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import orjson
import prometheus_client
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.kvstore.launch import StoreProcess
from tandem.service.spawn import ServiceProcess, stop_all
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.integration.leaks import Baseline, namespace_processes
from tests.integration.system import InProcessSystem, start_router

MODEL = "SmolLM2-135M-Instruct"
PROMPT = list(range(100, 140))
MAX_TOKENS = 60
KILL_AFTER_CHUNKS = 15
DECODE_MS = 20.0


class Fleet:
    """Decode workers as real processes of one namespace, and the router in this process."""

    def __init__(self, redis_url: str, tmp_path: Path, workers: int) -> None:
        self.redis_url = redis_url
        self.namespace = f"test-{uuid.uuid4().hex[:8]}"
        self.tmp_path = tmp_path
        self.processes: dict[str, ServiceProcess] = {}
        self.workers = workers
        self.prefill: ServiceProcess | None = None
        self.store: StoreProcess | None = None
        self.system: InProcessSystem | None = None

    def _worker(self, role: str, worker_id: str, *extra: str) -> ServiceProcess:
        store = ["--kvstore-address", self.store.address] if self.store else []
        return ServiceProcess(worker_id, f"services.{role}", [
            "--redis-url", self.redis_url, "--namespace", self.namespace, "--engine", "mock",
            "--mock-decode-ms", str(DECODE_MS), "--worker-id", worker_id,
            "--host", "127.0.0.1", "--port", "0", "--lease-ttl-s", "1", *store, *extra],
            log_path=self.tmp_path / f"{worker_id}.log")

    async def start(self, max_migrations: int, prefill: bool = False,
                    prefill_ms_per_token: float = 0.05) -> InProcessSystem:
        """With ``prefill``, a KV store, and a prefill worker that prefills every prompt first
        (``prefill_ms_per_token`` each) and writes its blocks there (every decode worker reads
        them)."""
        if prefill:
            self.store = StoreProcess(self.redis_url, f"/dev/shm/tandem-{self.namespace}.arena",
                                      str(self.tmp_path / "nvme"), namespace=self.namespace)
            self.store.start()
            self.prefill = self._worker("prefill", "prefill-0", "--mock-prefill-ms-per-token",
                                        str(prefill_ms_per_token)).start()
        self.processes = {f"decode-{i}": self._worker("decode", f"decode-{i}").start()
                          for i in range(self.workers)}
        self.system = await start_router(
            self.redis_url, self.namespace, [], prefill_workers=int(prefill),
            max_migrations=max_migrations, retries=1,
            disaggregation="always" if prefill else "never")
        async with asyncio.timeout(30):
            while sum(w.routable for w in self.system.router.watcher.of_role("decode")) \
                    < len(self.processes):
                for process in self.processes.values():
                    process.check_alive()
                await asyncio.sleep(0.05)
        return self.system

    def serving(self) -> str:
        """The worker id of the one decode worker with a request in flight."""
        assert self.system is not None
        busy = [w for w, n in self.system.router.ledger.requests.items() if n > 0]
        assert len(busy) == 1, busy
        return busy[0]

    def kill(self, worker_id: str) -> None:
        self.processes[worker_id].kill()

    async def close(self) -> None:
        if self.system is not None:
            await self.system.close()
        stop_all([*self.processes.values(), *filter(None, [self.prefill, self.store])],
                 timeout_s=5)
        if self.store is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/tandem-{self.namespace}.arena")


@pytest.fixture
async def fleet(redis_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(redis_url, tmp_path, workers=2)
    yield fleet
    await fleet.close()


def body(stream: bool, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {}),
            **extra}


def migrations(outcome: str) -> float:
    return sum(sample.value for metric in prometheus_client.REGISTRY.collect()
               for sample in metric.samples
               if sample.name == "tandem_router_migrations_total"
               and sample.labels.get("tandem_outcome") == outcome)


def token_ids(text: str) -> list[int]:
    """The mock engine's text is " tok<id>" per token."""
    return [int(part) for part in text.split(" tok")[1:]]


async def stream_killing(client: httpx.AsyncClient, fleet: Fleet, kills: int,
                         **extra: object) -> tuple[list[dict[str, object] | str], float]:
    """A streamed completion; the worker serving it is SIGKILLed after every
    ``KILL_AFTER_CHUNKS`` chunks, ``kills`` times. The events, and the longest gap between
    two of them."""
    events: list[dict[str, object] | str] = []
    longest = 0.0
    last = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body(True, **extra)) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            longest, last = max(longest, now - last), now
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else orjson.loads(payload))
            if kills and len(events) % KILL_AFTER_CHUNKS == 0:
                fleet.kill(fleet.serving())
                kills -= 1
    return events, longest


async def continuation(fleet: Fleet, worker_id: str, sent: list[int]) -> list[int]:
    """What ``worker_id`` generates, undisturbed, for the prompt followed by ``sent`` and the
    tokens left of max_tokens."""
    assert fleet.system is not None
    worker = fleet.system.router.watcher.workers[worker_id]
    message = worker_pb2.GenerateRequest(
        request_id="reference", prompt_token_ids=PROMPT + sent, model=MODEL,
        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS - len(sent), temperature=0))
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        ids: list[int] = []
        response: worker_pb2.GenerateResponse
        async for response in stub.Generate(message):
            ids.extend(response.delta.token_ids)
    return ids


def migration_span(exporter: InMemorySpanExporter) -> dict[str, object]:
    routes = [dict(span.attributes or {}) for span in exporter.get_finished_spans()
              if span.name == "tandem.route" and "tandem.migration" in (span.attributes or {})]
    assert len(routes) == 1, routes
    return routes[0]


async def undisturbed(client: httpx.AsyncClient) -> list[int]:
    reply = await client.post("/v1/completions", json=body(False))
    reference = token_ids(reply.json()["choices"][0]["text"])
    assert len(reference) == MAX_TOKENS
    return reference


async def assert_spliced(produced: list[int], reference: list[int], fleet: Fleet,
                         exporter: InMemorySpanExporter) -> None:
    """The tokens sent before the kill are the undisturbed run's, the rest exactly what the
    surviving worker generates for the prompt plus those tokens (the mock's greedy stream is
    seeded by its whole prompt, so it need not equal the undisturbed run's tail): no gap, no
    repeated token."""
    span = migration_span(exporter)
    sent = int(span["tandem.migration.sent_tokens"])  # type: ignore[call-overload]
    survivor = next(w for w in fleet.processes if w != span["tandem.migration.from_worker"])
    assert span["tandem.route.decode_worker"] == survivor
    assert 0 < sent < MAX_TOKENS
    assert produced[:sent] == reference[:sent]
    assert produced[sent:] == await continuation(fleet, survivor, reference[:sent])
    assert len(produced) == MAX_TOKENS


@pytest.mark.parametrize("prefill", [False, True], ids=["aggregated", "disaggregated"])
async def test_a_stream_whose_worker_is_killed_continues_on_another(
        fleet: Fleet, exporter: InMemorySpanExporter, prefill: bool) -> None:
    """Disaggregated: the first token came from the prefill worker, the decode worker that
    continued from it is killed, another decode worker resumes."""
    system = await fleet.start(max_migrations=2, prefill=prefill)
    resumed = migrations("resumed")
    async with httpx.AsyncClient(base_url=system.http_url, timeout=15) as client:
        reference = await undisturbed(client)
        baseline = Baseline.take()
        exporter.clear()
        events, longest_gap = await stream_killing(client, fleet, kills=1)
    await baseline.reached(system)
    # nothing of the killed worker outlives it; the rest runs on
    assert namespace_processes(fleet.namespace) == {
        process.pid for process in [*fleet.processes.values(), fleet.prefill, fleet.store]
        if process is not None and process.running}

    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert not any("error" in chunk for chunk in chunks), chunks[-3:]
    choices = [c["choices"][0] for c in chunks if c["choices"]]  # type: ignore[index]
    await assert_spliced(token_ids("".join(c["text"] for c in choices)), reference, fleet,
                         exporter)
    finishes = [c["finish_reason"] for c in choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    usage = chunks[-1]["usage"]
    assert isinstance(usage, dict)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        len(PROMPT), MAX_TOKENS, len(PROMPT) + MAX_TOKENS)
    if prefill:  # the new worker loaded the prompt's blocks (the tail's too) from the store
        assert usage["prompt_tokens_details"]["cached_tokens"] == len(PROMPT)
    assert migrations("resumed") == resumed + 1
    generates = [span for span in exporter.get_finished_spans()
                 if span.name == "tandem.v1.DecodeService/Generate"
                 and span.kind is SpanKind.CLIENT]
    prefills = [span for span in exporter.get_finished_spans()
                if span.name == "tandem.v1.PrefillService/Prefill"
                and span.kind is SpanKind.CLIENT]
    assert len(prefills) == (1 if prefill else 0)
    # The lost worker's call and the new worker's, in the request's one trace.
    assert len(generates) == 2
    assert len({span.context.trace_id for span in generates + prefills}) == 1
    assert (generates[1].attributes or {})["tandem.migration.resumed_tokens"] > 0
    print(f"longest gap between two events: {longest_gap * 1000:.0f} ms")


async def test_a_non_streamed_request_whose_worker_is_killed_completes(
        fleet: Fleet, exporter: InMemorySpanExporter) -> None:
    system = await fleet.start(max_migrations=2)
    resumed = migrations("resumed")
    async with httpx.AsyncClient(base_url=system.http_url, timeout=15) as client:
        reference = await undisturbed(client)
        exporter.clear()
        reply = asyncio.create_task(client.post("/v1/completions", json=body(False)))
        async with asyncio.timeout(10):
            while not any(n > 0 for n in system.router.ledger.requests.values()):
                await asyncio.sleep(0.01)
        await asyncio.sleep(KILL_AFTER_CHUNKS * DECODE_MS / 1000)
        fleet.kill(fleet.serving())
        answer = await reply
    assert answer.status_code == 200, answer.text
    result = answer.json()
    await assert_spliced(token_ids(result["choices"][0]["text"]), reference, fleet, exporter)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["prompt_tokens"] == len(PROMPT)
    assert result["usage"]["completion_tokens"] == MAX_TOKENS
    assert migrations("resumed") == resumed + 1


async def test_past_the_migration_limit_the_stream_ends_with_an_error_event(
        fleet: Fleet) -> None:
    system = await fleet.start(max_migrations=1)
    limit = migrations("limit")
    async with httpx.AsyncClient(base_url=system.http_url, timeout=15) as client:
        started = time.perf_counter()
        events, _ = await stream_killing(client, fleet, kills=2)
        elapsed = time.perf_counter() - started
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and set(error) == {"error"}, events[-3:]
    assert error["error"]["type"] == "server_error"  # type: ignore[index]
    assert "--max-migrations 1" in error["error"]["message"]  # type: ignore[index]
    assert migrations("limit") == limit + 1
    # Bounded: the stream ends within the time its tokens take, not at a deadline.
    assert elapsed < MAX_TOKENS * DECODE_MS / 1000 + 3


async def test_a_stream_with_stop_strings_continues_on_another_without_losing_held_text(
        fleet: Fleet, exporter: InMemorySpanExporter) -> None:
    """Its lost worker held back the end of the text (what could begin a stop string, as vLLM
    does): the new worker returns the text of the tokens sent, the router restores what was
    held back and keeps matching the stop strings across the migration: the text is exactly
    the tokens', none lost, none repeated."""
    system = await fleet.start(max_migrations=2)
    resumed = migrations("resumed")
    async with httpx.AsyncClient(base_url=system.http_url, timeout=15) as client:
        reference = await undisturbed(client)
        exporter.clear()
        events, _ = await stream_killing(client, fleet, kills=1, stop=["never said"])
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert not any("error" in chunk for chunk in chunks), chunks[-3:]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])  # type: ignore[index]
    produced = token_ids(text)
    assert text == "".join(f" tok{token}" for token in produced)
    await assert_spliced(produced, reference, fleet, exporter)
    assert migrations("resumed") == resumed + 1


async def test_a_prefill_worker_killed_mid_prefill_costs_the_request_nothing(
        fleet: Fleet) -> None:
    """The prefill worker SIGKILLed while it computes the prompt (a 2 s prefill): the decode
    worker prefills the prompt itself at once; the client gets the whole stream; the router
    holds nothing of the request afterwards (ledger, running requests, asyncio tasks, fds at
    their baseline)."""
    system = await fleet.start(max_migrations=2, prefill=True,
                               prefill_ms_per_token=2000 / len(PROMPT))
    assert fleet.prefill is not None
    async with httpx.AsyncClient(base_url=system.http_url, timeout=15) as client:
        # every channel the request may use is open: one request per decode worker at once
        await asyncio.gather(*(client.post("/v1/completions", json=body(False, prompt=[i]))
                               for i in range(1, 7)))
        baseline = Baseline.take()
        reply = asyncio.create_task(client.post("/v1/completions", json=body(False)))
        async with asyncio.timeout(10):
            while not system.router.ledger.running("prefill-0"):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # well inside the prefill
        killed = time.perf_counter()
        fleet.prefill.kill()
        answer = await reply
        elapsed = time.perf_counter() - killed
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert len(token_ids(result["choices"][0]["text"])) == MAX_TOKENS
    assert result["usage"]["completion_tokens"] == MAX_TOKENS
    assert elapsed < MAX_TOKENS * DECODE_MS / 1000 + 1.0, elapsed  # not after the prefill
    await baseline.reached(system)


async def test_a_worker_returns_the_text_of_the_resumed_tokens(fleet: Fleet) -> None:
    """``resumed_tokens``: the first message carries the text of the prompt's last tokens (the
    mock's is " tok<id>" each); a count that leaves no prompt is refused, naming the field."""
    system = await fleet.start(max_migrations=2)
    worker = system.router.watcher.workers["decode-0"]
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = worker_pb2_grpc.DecodeServiceStub(channel)
        message = worker_pb2.GenerateRequest(
            request_id="resumed", prompt_token_ids=PROMPT, model=MODEL, resumed_tokens=5,
            sampling=common_pb2.SamplingParams(max_tokens=3, temperature=0))
        replies = [reply async for reply in stub.Generate(message)]
        assert replies[0].resumed_text == "".join(f" tok{t}" for t in PROMPT[-5:])
        assert not any(reply.resumed_text for reply in replies[1:])
        message.resumed_tokens = len(PROMPT)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Generate(message):
                pass
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "resumed_tokens" in (refused.value.details() or "")
