"""A worker told to drain (WorkerService.Drain, as the planner does) under streaming load:
"draining" in discovery at once, no new request routed to it, its running streams complete,
it leaves, and no request is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tandem.engines.base import EngineOutput, EngineRequest
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.integration.leaks import Baseline
from tests.integration.stream_load import StreamLoad
from tests.integration.system import (
    InProcessSystem,
    InProcessWorker,
    start_decode_worker,
    start_system,
)
from tests.integration.test_migration import migrations

SERVED_ON_S = 5.0
"""How long after the drained worker left a new stream must have started on the other one."""


@pytest.fixture
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=2, decode_ms=4.0)
    yield system
    await system.close()


def record_starts(worker: InProcessWorker) -> list[float]:
    """When each engine request of ``worker`` started."""
    starts: list[float] = []
    generate = worker.engine.generate

    def recording(request: EngineRequest) -> AsyncIterator[EngineOutput]:
        starts.append(time.monotonic())
        return generate(request)

    worker.engine.generate = recording  # type: ignore[method-assign]
    return starts


async def drain(address: str) -> worker_pb2.DrainResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await worker_pb2_grpc.WorkerServiceStub(channel).Drain(
            worker_pb2.DrainRequest(), timeout=2)


async def test_drained_worker_finishes_its_streams_and_takes_no_new_one(
        system: InProcessSystem) -> None:
    starts = {worker.worker_id: record_starts(worker) for worker in system.workers}
    load = StreamLoad(system.http_url, clients=8, max_tokens=100)  # ~0.4 s per stream
    load.start()
    while len(load.outcomes) < 16:  # past the first requests (warm-up), streams overlap
        await asyncio.sleep(0.05)
    draining, other = sorted(system.workers, key=lambda w: -w.engine.load().running)
    address = system.router.watcher.workers[draining.worker_id].address
    reply = await drain(address)
    asked = time.monotonic()
    assert not reply.already_draining
    assert reply.running_requests > 0  # it had streams to finish
    # the router sees the state within a discovery refresh (0.1 s) and routes elsewhere
    while system.router.watcher.workers[draining.worker_id].state != "draining":
        assert time.monotonic() - asked < 0.5, "draining not announced"
        await asyncio.sleep(0.01)
    seen = time.monotonic()
    assert not system.router.routing.decode_workers(
        "SmolLM2-135M-Instruct") or all(
        w.worker_id != draining.worker_id
        for w in system.router.routing.decode_workers("SmolLM2-135M-Instruct"))
    # its streams finish (well within the drain grace of 1 s), then it leaves
    await asyncio.wait_for(asyncio.shield(draining.task), 3.0)
    left = time.monotonic()
    # the other worker serves on: new streams start there (8 clients, one ~0.4 s stream each,
    # so within a stream or two; a router that stopped routing starts none)
    while not [t for t in starts[other.worker_id] if t > left]:
        assert time.monotonic() - left < SERVED_ON_S, "the other worker stopped serving"
        await asyncio.sleep(0.02)
    await load.stop()

    assert not [t for t in starts[draining.worker_id] if t > seen], \
        "a new request reached the draining worker"
    failed = load.failed()
    print(f"{len(load.outcomes)} streams, {len(failed)} failed; draining seen by the router "
          f"{seen - asked:.3f} s after Drain, {reply.running_requests} running streams finished"
          f" and the worker left {left - asked:.3f} s after Drain")
    assert not failed, f"{len(failed)} of {len(load.outcomes)} failed: {failed[:3]}"
    assert left - asked < 1.5, left - asked
    while draining.worker_id in system.router.watcher.workers:
        assert time.monotonic() - left < 1.0, "the drained worker is still listed"
        await asyncio.sleep(0.02)


async def test_streams_still_running_at_the_end_of_the_grace_are_handed_over(
        redis_url: str) -> None:
    """A grace far shorter than the streams: what is still running when it ends is migrated
    to the other worker by the router (the client sees one unbroken stream), then the drained
    worker exits; 0 lost."""
    system = await start_system(redis_url, decode_workers=2, decode_ms=4.0, drain_grace_s=0.2)
    try:
        warm = StreamLoad(system.http_url, clients=8)  # every channel to the workers open
        warm.start()
        await warm.served(8)
        await warm.stop()
        baseline = Baseline.take()
        resumed = migrations("resumed")
        load = StreamLoad(system.http_url, clients=8, max_tokens=300)  # ~1.2 s per stream
        load.start()
        # every client streaming at once; bounded, because under a loaded machine a stream can
        # end before the last one starts (the test needs streams running, not all eight)
        overlap_by = time.monotonic() + 10.0
        while (sum(w.engine.load().running for w in system.workers) < 8
               and time.monotonic() < overlap_by):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # every stream has sent tokens
        draining = max(system.workers, key=lambda w: w.engine.load().running)
        running = draining.engine.load().running
        assert running > 0
        asked = time.monotonic()
        reply = await drain(system.router.watcher.workers[draining.worker_id].address)
        assert reply.running_requests == running
        await asyncio.wait_for(asyncio.shield(draining.task), 2.0)
        left = time.monotonic() - asked
        await load.stop()
        await baseline.reached(system)
    finally:
        await system.close()
    failed = load.failed()
    handed_over = migrations("resumed") - resumed
    print(f"{len(load.outcomes)} streams, {len(failed)} failed; {handed_over} of {running} "
          f"handed over, the worker left {left:.3f} s after Drain")
    assert not failed, f"{len(failed)} of {len(load.outcomes)} failed: {failed[:3]}"
    assert handed_over == running
    assert left < 0.2 + 0.2 + 0.5, left  # the notice, the grace, and time to exit


async def test_a_call_routed_before_the_router_saw_the_drain_is_served(redis_url: str) -> None:
    """Routers learn of "draining" at their next discovery refresh; a call that a router sends
    meanwhile arrives after the Drain. Within the worker's ``drain_notice_s`` it is served,
    not refused (a refusal costs the request its retry, and fails it when the retry meets a
    second draining worker: the planner drains one per tick); after the notice the worker
    refuses new calls and leaves."""
    import uuid

    worker = await start_decode_worker(redis_url, f"test-{uuid.uuid4().hex[:8]}", "decode-0",
                                       drain_notice_s=1.0)
    address = worker.server.address
    message = worker_pb2.GenerateRequest(
        request_id="late", prompt_token_ids=[1, 2, 3], model="SmolLM2-135M-Instruct",
        sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    try:
        asked = time.monotonic()
        assert not (await drain(address)).already_draining
        async with grpc.aio.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.DecodeServiceStub(channel)
            replies = [reply async for reply in stub.Generate(message, timeout=5)]
            served = time.monotonic() - asked
            await asyncio.wait_for(asyncio.shield(worker.task), 5.0)
            with pytest.raises(grpc.aio.AioRpcError):
                message.request_id = "after"
                _ = [reply async for reply in stub.Generate(message, timeout=2)]
    finally:
        await worker.shutdown()
    tokens = sum(len(reply.delta.token_ids) for reply in replies)
    print(f"a call {served:.3f} s after Drain was served ({tokens} tokens); the worker left")
    assert served < 1.0, "the call came after the notice: the test proves nothing"
    assert tokens == 4
