"""The framed token stream beside gRPC: the router uses it when a decode worker announces it,
and it behaves as the gRPC call does (same messages, same errors, cancellation and deadlines
abort the engine request, drain refuses new calls and hands running ones over)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import httpx
import orjson
import pytest

from tandem.errors import from_rpc_error
from tandem.protocol import coalesced
from tandem.service.groups import GrpcSettings
from tandem.tokenstream.client import TokenStreamClient
from tandem.tokenstream.frames import FrameBuffer, Kind, frame, open_frame
from tandem.tokenstream.server import TokenStreamServer
from tandem.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.integration.system import InProcessSystem, InProcessWorker, start_system

MODEL = "SmolLM2-135M-Instruct"
SETTINGS = GrpcSettings()


@pytest.fixture
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1, decode_ms=2.0)
    yield system
    await system.close()


def stream_client(worker: InProcessWorker) -> TokenStreamClient:
    assert worker.runtime is not None and worker.runtime.stream is not None
    return TokenStreamClient("127.0.0.1", worker.runtime.stream.port, SETTINGS, 4)


def request(max_tokens: int, prompt: list[int] | None = None,
            model: str = MODEL) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id="t", prompt_token_ids=prompt or [1, 2, 3, 4], model=model,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0,
                                           ignore_eos=True))


async def running(worker: InProcessWorker) -> int:
    return worker.engine.load().running


async def settles_idle(worker: InProcessWorker, within_s: float) -> float:
    """Seconds until the worker's engine runs nothing (fails past ``within_s``)."""
    started = time.perf_counter()
    async with asyncio.timeout(within_s):
        while await running(worker):
            await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def chat(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "count"}],
            "max_tokens": 24, "temperature": 0, "stream": True})
        assert response.status_code == 200, response.text
        return response.text


async def test_the_router_streams_over_it_and_answers_what_grpc_answers(
        system: InProcessSystem, redis_url: str) -> None:
    worker = system.workers[0]
    assert worker.runtime is not None and worker.runtime.stream is not None
    announced = system.router.watcher.workers[worker.worker_id]
    assert announced.stream_port == worker.runtime.stream.port > 0
    calls_before = worker.runtime.stream.calls  # the router's canary went this way too
    over_stream = await chat(system.http_url)
    assert worker.runtime.stream.calls == calls_before + 1
    grpc_only = await start_system(redis_url, decode_workers=1, decode_ms=2.0,
                                   token_stream=False)
    try:
        over_grpc = await chat(grpc_only.http_url)
        other = grpc_only.workers[0].runtime
        assert other is not None and other.stream is not None and other.stream.calls == 0
    finally:
        await grpc_only.close()

    def content(body: str) -> str:  # ids, timestamps and chunk boundaries may differ
        chunks = [orjson.loads(line[len("data: "):]) for line in body.splitlines()
                  if line.startswith("data: {")]
        return "".join(chunk["choices"][0]["delta"].get("content") or ""
                       for chunk in chunks if chunk["choices"])

    assert content(over_stream) == content(over_grpc)
    assert len(content(over_stream)) >= 24


async def test_a_workers_error_is_the_one_grpc_raises(system: InProcessSystem) -> None:
    worker = system.workers[0]
    bad = request(4, model="no-such-model")
    with pytest.raises(grpc.aio.AioRpcError) as over_stream:
        async for _ in stream_client(worker).call(bad, worker_pb2.GenerateResponse, 5):
            pass
    async with grpc.aio.insecure_channel(worker.server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as over_grpc:
            async for _ in worker_pb2_grpc.DecodeServiceStub(channel).Generate(bad, timeout=5):
                pass
    assert over_stream.value.code() == over_grpc.value.code() == grpc.StatusCode.NOT_FOUND
    assert over_stream.value.details() == over_grpc.value.details()
    assert from_rpc_error(over_stream.value).code == from_rpc_error(over_grpc.value).code


async def test_cancelling_a_call_aborts_its_engine_request(system: InProcessSystem) -> None:
    worker = system.workers[0]
    call = stream_client(worker).call(request(4_000), worker_pb2.GenerateResponse, 60)
    tokens = 0
    async for response in call:
        tokens += len(response.delta.token_ids)
        if tokens >= 3:
            break
    assert await running(worker) == 1
    call.cancel()
    # 4,000 tokens at 2 ms a step: the request would run ~8 s if nothing aborted it
    print(f"engine idle {await settles_idle(worker, 1.0):.3f} s after the cancel")


async def test_a_passed_deadline_fails_the_call_and_aborts_the_engine_request(
        system: InProcessSystem) -> None:
    worker = system.workers[0]
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stream_client(worker).call(request(4_000), worker_pb2.GenerateResponse,
                                                   0.3):
            pass
    took = time.perf_counter() - started
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.3 <= took < 1.0
    await settles_idle(worker, 1.0)


async def test_calls_reuse_one_connection(system: InProcessSystem) -> None:
    worker = system.workers[0]
    assert worker.runtime is not None and worker.runtime.stream is not None
    connections_before = len(worker.runtime.stream.connections)  # the router's own
    client = stream_client(worker)
    for _ in range(3):
        replies = [r async for r in client.call(request(4), worker_pb2.GenerateResponse, 5)]
        assert sum(len(r.delta.token_ids) for r in replies) == 4
    assert len(worker.runtime.stream.connections) == connections_before + 1


# The server's lifecycle, on a handler of the test's own.

async def counting(request: worker_pb2.GenerateRequest, context: Any
                   ) -> AsyncGenerator[worker_pb2.GenerateResponse, None]:
    """One token every 10 ms, ``max_tokens`` of them; prompt token 666 fails the handler, 777
    sends them all at once."""
    if 666 in request.prompt_token_ids:
        raise RuntimeError("boom")
    burst = 777 in request.prompt_token_ids
    for token in range(request.sampling.max_tokens):
        await asyncio.sleep(0 if burst else 0.01)
        yield worker_pb2.GenerateResponse(delta=common_pb2.TokenDelta(token_ids=[token]))


@pytest.fixture
async def server() -> AsyncIterator[TokenStreamServer]:
    server = TokenStreamServer(counting, worker_pb2.GenerateRequest, "127.0.0.1", 0, SETTINGS)
    await server.start()
    yield server
    await server.close()


def client_of(server: TokenStreamServer) -> TokenStreamClient:
    return TokenStreamClient("127.0.0.1", server.port, SETTINGS, 4)


async def tokens_of(client: TokenStreamClient, max_tokens: int,
                    prompt: list[int] | None = None) -> list[int]:
    return [token async for reply in client.call(request(max_tokens, prompt),
                                                 worker_pb2.GenerateResponse, 10)
            for token in reply.delta.token_ids]


async def test_a_handler_failure_is_unknown_and_the_server_keeps_serving(
        server: TokenStreamServer) -> None:
    client = client_of(server)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tokens_of(client, 3, [666])
    assert error.value.code() == grpc.StatusCode.UNKNOWN
    assert "boom" in (error.value.details() or "")
    assert await tokens_of(client, 3) == [0, 1, 2]


async def test_messages_waiting_when_the_caller_reads_come_out_as_one(
        server: TokenStreamServer) -> None:
    call = client_of(server).call(request(50, [777]), worker_pb2.GenerateResponse, 10,
                                  coalesce=coalesced)
    replies = [await anext(call)]
    await asyncio.sleep(0.2)  # the caller is busy: the other 49 arrive meanwhile
    replies += [reply async for reply in call]
    assert [t for reply in replies for t in reply.delta.token_ids] == list(range(50))
    print(f"{len(replies)} messages for 50 tokens")
    assert len(replies) == 2


async def test_drain_finishes_running_calls_and_refuses_new_ones(
        server: TokenStreamServer) -> None:
    early = client_of(server)
    await tokens_of(early, 1)  # an idle pooled connection, opened before the drain
    running_call = asyncio.create_task(tokens_of(client_of(server), 20))  # ~0.2 s
    await asyncio.sleep(0.05)
    server.drain_grace_s = 5
    draining = asyncio.create_task(server.drain())
    await asyncio.sleep(0.01)
    for client in (early, client_of(server)):  # on the open connection, and a new one
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await tokens_of(client, 3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await running_call == list(range(20))
    await asyncio.wait_for(draining, 1)


async def test_calls_still_running_when_the_grace_ends_end_unavailable(
        server: TokenStreamServer) -> None:
    call = asyncio.create_task(tokens_of(client_of(server), 1_000))  # ~10 s
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    server.drain_grace_s = 0.2
    await server.drain()
    assert time.perf_counter() - started < 1.0
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("garbage", [b"\xff" * 10, b"\x00\x00\x00\x7f\x01"])
async def test_a_peer_sending_garbage_is_disconnected_and_others_are_served(
        server: TokenStreamServer, garbage: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(garbage)
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    writer.close()
    assert await tokens_of(client_of(server), 2) == [0, 1]


@pytest.mark.parametrize("body", [open_frame((), b"\x0a\xff"),  # a truncated protobuf field
                                  frame(Kind.OPEN, b"\x00")],  # no whole metadata length
                         ids=["truncated-protobuf", "short-metadata-length"])
async def test_an_unreadable_call_is_internal_and_the_connection_serves_on(
        server: TokenStreamServer, body: bytes) -> None:
    """As grpc.aio answers a request it cannot parse: INTERNAL, no handler call."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(body)
    buffer = FrameBuffer(SETTINGS.max_message_bytes)
    replies: list[tuple[Kind, bytes]] = []
    while not replies:
        replies += buffer.feed(await asyncio.wait_for(reader.read(1 << 16), 2))
    assert [kind for kind, _ in replies] == [Kind.ERROR]
    error = orjson.loads(replies[0][1])
    assert error["code"] == grpc.StatusCode.INTERNAL.value[0]
    assert "could not read the call's request" in error["details"]
    writer.write(open_frame((), request(2).SerializeToString()))  # the same connection
    replies = []
    while not replies or replies[-1][0] is not Kind.END:
        replies += buffer.feed(await asyncio.wait_for(reader.read(1 << 16), 2))
    assert [kind for kind, _ in replies] == [Kind.MESSAGE, Kind.MESSAGE, Kind.END]
    writer.close()


async def test_an_unreachable_worker_is_unavailable() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in TokenStreamClient("127.0.0.1", 1, SETTINGS, 4).call(
                request(1), worker_pb2.GenerateResponse, 5):
            pass
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
