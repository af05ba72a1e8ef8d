"""The router's fleet guard against real workers (mock engine) over real gRPC: the circuit
breaker takes out a worker that passes its health checks but fails every request and puts it
back after a probe; admission control answers 429 with Retry-After past its bounds; a request
ends at its deadline, and so does its engine request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import httpx
import prometheus_client
import pytest

from services.router.core.admission import AdmissionSettings
from services.router.core.breaker import BreakerSettings, BreakerState
from tandem.engines.mock import MockEngine
from tandem.errors import RETRY_PUSHBACK_KEY
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system
from tests.integration.test_router_http import CHAT, chat_body, sse_events

FAILURES = 3
COOLDOWN_S = 1.5


async def warmed(system: InProcessSystem) -> InProcessSystem:
    """The system after one request (the router loads its tokenizer on the first one)."""
    async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
        assert (await client.post(CHAT, json=chat_body(max_tokens=1))).status_code == 200
    return system


def metric(name: str, **labels: str) -> float:
    return sum(sample.value for family in prometheus_client.REGISTRY.collect()
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=2, retries=1, breaker=BreakerSettings(
        failures=FAILURES, window_s=30.0, cooldown_s=COOLDOWN_S, probe_timeout_s=2.0))
    yield system
    await system.close()


async def test_a_worker_that_fails_every_request_is_taken_out_and_put_back(
        pair: InProcessSystem) -> None:
    router = pair.router
    failing = pair.workers[1]
    engine = failing.engine
    assert isinstance(engine, MockEngine)
    engine.fail_rate = 1.0  # passes health (lease, canary done), fails every Generate
    opened_before = metric("tandem_router_breaker_transitions_total",
                           tandem_breaker_from="closed", tandem_breaker_to="open")
    async with httpx.AsyncClient(base_url=pair.http_url, timeout=30) as client:
        # 40 requests, 4 at a time, well within the cool-down: every one succeeds (a failure
        # before the first token is retried on the other worker), and once the breaker
        # opened no request reaches the failing worker.
        started = time.monotonic()
        statuses: list[int] = []
        failures_when_opened: int | None = None
        for batch in range(10):
            replies = await asyncio.gather(*(client.post(CHAT, json=chat_body(
                max_tokens=3, messages=[{"role": "user", "content": f"story {batch}-{i}"}]))
                for i in range(4)))
            statuses += [r.status_code for r in replies]
            if failures_when_opened is None and router.guard.breakers.state(
                    failing.worker_id) is BreakerState.OPEN:
                failures_when_opened = engine.injected_failures
        elapsed = time.monotonic() - started
        assert elapsed < COOLDOWN_S, "the load outlasted the cool-down: probes interfere"
        assert statuses == [200] * 40
        # The threshold, plus the requests already on their way when it opened (4 at a time).
        assert failures_when_opened is not None
        assert FAILURES <= failures_when_opened <= FAILURES + 3
        assert engine.injected_failures == failures_when_opened  # none after it opened
        assert router.guard.breakers.state(failing.worker_id) is BreakerState.OPEN
        assert metric("tandem_router_breaker_open", tandem_worker_id=failing.worker_id) == 1
        assert metric("tandem_router_breaker_transitions_total", tandem_breaker_from="closed",
                      tandem_breaker_to="open") == opened_before + 1

        # The first probe (after the cool-down) fails: open again. Then the failing mode is
        # switched off, and the next probe closes the breaker: the worker is routed again.
        async with asyncio.timeout(COOLDOWN_S * 3):
            while engine.injected_failures == failures_when_opened:
                await asyncio.sleep(0.05)
        engine.fail_rate = 0.0
        async with asyncio.timeout(COOLDOWN_S * 3):
            while router.guard.breakers.state(failing.worker_id) is not BreakerState.CLOSED:
                await asyncio.sleep(0.05)
        assert engine.injected_failures == failures_when_opened + 1
        assert metric("tandem_router_breaker_open", tandem_worker_id=failing.worker_id) == 0
        workers = router.routing.decode_workers(router.settings.model.served_model_name)
        assert failing.worker_id in {w.worker_id for w in router.guard.candidates(workers)}
        reply = await client.post(CHAT, json=chat_body(max_tokens=3))
        assert reply.status_code == 200


@pytest.fixture
async def tiny(redis_url: str) -> AsyncIterator[InProcessSystem]:
    """One decode worker with 2 slots (its KV holds two 32k-token requests), a queue of 2."""
    system = await start_system(redis_url, decode_workers=1, decode_ms=20.0,
                                admission=AdmissionSettings(
                                    oversubscription=1.0, request_tokens=32768, max_queue=2,
                                    max_queue_wait_s=5.0, retry_after_min_ms=100))
    yield await warmed(system)
    await system.close()


async def test_past_the_slots_and_the_queue_the_router_answers_429_at_once(
        tiny: InProcessSystem) -> None:
    refused_before = metric("tandem_router_refused_total", tandem_reason="queue_full")
    waited_before = metric("tandem_router_queue_wait_seconds_count")

    async def one(client: httpx.AsyncClient, i: int) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        reply = await client.post(CHAT, json=chat_body(
            max_tokens=15, ignore_eos=True, stream=True,
            messages=[{"role": "user", "content": f"story {i}"}]))
        return reply, time.perf_counter() - started

    async with httpx.AsyncClient(base_url=tiny.http_url, timeout=30) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(8)))
        ok = [(r, s) for r, s in results if r.status_code == 200]
        refused = [(r, s) for r, s in results if r.status_code == 429]
        assert (len(ok), len(refused)) == (4, 4)  # 2 slots + 2 queued; 4 refused
        for reply, seconds in refused:
            assert seconds < 0.2  # answered at once, not after waiting (a stream takes 0.3 s)
            assert int(reply.headers["retry-after"]) >= 1
            assert int(reply.headers["retry-after-ms"]) >= 100
            error = reply.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        for reply, _ in ok:
            assert sse_events(reply.text)[-1] == "[DONE]"
        assert metric("tandem_router_refused_total", tandem_reason="queue_full") \
            == refused_before + 4
        assert tiny.router.guard.admission.in_flight == 0
        assert metric("tandem_router_queue_wait_seconds_count") == waited_before + 2
        assert metric("tandem_router_queued_requests") == 0
        assert (await client.post(CHAT, json=chat_body(max_tokens=2))).status_code == 200

    # gRPC: RESOURCE_EXHAUSTED with gRPC's retry pushback in the trailers.
    async with grpc.aio.insecure_channel(tiny.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.CompleteRequest(
            model="SmolLM2-135M-Instruct", prompt="Once",
            sampling=common_pb2.SamplingParams(max_tokens=15, ignore_eos=True))
        calls = [stub.Complete(request) for _ in range(6)]

        async def drain(call: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:  # type: ignore[type-arg]
            async for _ in call:
                pass
            return await call.code()

        codes = await asyncio.gather(*(drain(c) for c in calls), return_exceptions=True)
        exhausted = [c for c in codes if isinstance(c, grpc.aio.AioRpcError)]
        assert len(exhausted) == 2
        for error in exhausted:
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(dict(error.trailing_metadata() or ())[RETRY_PUSHBACK_KEY]) >= 100


@pytest.fixture
async def slow(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1, decode_ms=100.0)
    yield await warmed(system)
    await system.close()


DEADLINE_S = 0.6
MARGIN_S = 0.25


async def _engine_idle(system: InProcessSystem) -> None:
    async with asyncio.timeout(0.3):
        while system.workers[0].engine.load().running:
            await asyncio.sleep(0.01)


async def test_a_request_ends_at_its_deadline_and_so_does_its_engine_request(
        slow: InProcessSystem) -> None:
    headers = {"x-request-timeout": str(DEADLINE_S)}
    body = chat_body(max_tokens=100, ignore_eos=True)
    async with httpx.AsyncClient(base_url=slow.http_url, timeout=30) as client:
        # Streamed: the tokens so far, then an error event, then [DONE].
        started = time.perf_counter()
        reply = await client.post(CHAT, json={**body, "stream": True}, headers=headers)
        took = time.perf_counter() - started
        assert DEADLINE_S <= took < DEADLINE_S + MARGIN_S
        events = sse_events(reply.text)
        assert events[-1] == "[DONE]"
        error = events[-2]
        assert isinstance(error, dict) and error["error"]["type"] == "timeout_error"
        assert error["error"]["code"] == "timeout"
        assert len(events) > 3  # tokens did arrive before the deadline
        await _engine_idle(slow)

        # Not streamed: 504.
        started = time.perf_counter()
        reply = await client.post(CHAT, json=body, headers=headers)
        took = time.perf_counter() - started
        assert reply.status_code == 504
        assert reply.json()["error"]["type"] == "timeout_error"
        assert DEADLINE_S <= took < DEADLINE_S + MARGIN_S
        await _engine_idle(slow)

        # A deadline that is no positive number of seconds is the client's mistake.
        reply = await client.post(CHAT, json=body, headers={"x-request-timeout": "soon"})
        assert reply.status_code == 400
        assert reply.json()["error"]["param"] == "x-request-timeout"

    # gRPC: the call's own deadline.
    async with grpc.aio.insecure_channel(slow.grpc_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        started = time.perf_counter()
        call = stub.Complete(router_pb2.CompleteRequest(
            model="SmolLM2-135M-Instruct", prompt="Once",
            sampling=common_pb2.SamplingParams(max_tokens=100, ignore_eos=True)),
            timeout=DEADLINE_S)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - started < DEADLINE_S + MARGIN_S
        await _engine_idle(slow)
    assert metric("tandem_router_requests_total", tandem_outcome="deadline") >= 2


async def test_without_breakers_the_retry_budget_bounds_retries(redis_url: str) -> None:
    """Breakers off, one of two workers failing every request: the failures it causes are
    retried on the other worker only while the budget lasts (2 + 0.1 per request), so worker
    calls stay within 1.1x the client requests (plus the reserve) and the rest fail."""
    system = await start_system(redis_url, decode_workers=2, retries=1,
                                breaker=BreakerSettings(failures=0),
                                admission=AdmissionSettings(retry_ratio=0.1, retry_reserve=2))
    try:
        engine = system.workers[1].engine
        assert isinstance(engine, MockEngine)
        engine.fail_rate = 1.0
        denied_before = metric("tandem_router_retries_denied_total")
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
            statuses: list[int] = []
            for batch in range(10):
                replies = await asyncio.gather(*(client.post(CHAT, json=chat_body(
                    max_tokens=2, messages=[{"role": "user", "content": f"tale {batch}-{i}"}]))
                    for i in range(4)))
                statuses += [r.status_code for r in replies]
        failed = statuses.count(500)
        retried = engine.injected_failures - failed
        assert set(statuses) <= {200, 500}
        assert failed > 0  # the budget ran out: those failures reached the client
        assert retried <= 2 + 0.1 * 40  # the reserve, and a tenth of the requests
        assert 40 + retried <= 1.1 * 40 + 2  # worker calls
        assert metric("tandem_router_retries_denied_total") - denied_before == failed
    finally:
        await system.close()


async def test_a_prefill_worker_that_fails_is_taken_out_of_routing(redis_url: str) -> None:
    """Every prompt through a prefill worker; it fails every call: each request falls back to
    its decode worker, and after the threshold the breaker keeps the prefill worker out."""
    system = await start_system(redis_url, decode_workers=1, prefill_workers=1,
                                disaggregation="always", breaker=BreakerSettings(
                                    failures=FAILURES, window_s=30.0, cooldown_s=30.0))
    try:
        prefill = system.workers[1]
        engine = prefill.engine
        assert isinstance(engine, MockEngine)
        engine.fail_rate = 1.0
        async with httpx.AsyncClient(base_url=system.http_url, timeout=30) as client:
            statuses = [(await client.post(CHAT, json=chat_body(
                max_tokens=2, messages=[{"role": "user", "content": f"tale {i}"}]))).status_code
                for i in range(10)]
        assert statuses == [200] * 10
        assert engine.injected_failures == FAILURES
        assert system.router.guard.breakers.state(prefill.worker_id) is BreakerState.OPEN
    finally:
        await system.close()
