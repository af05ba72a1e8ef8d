"""The router's gRPC API, health gating and reflection, over real gRPC on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.errors import from_rpc_error
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.integration.system import InProcessSystem, start_system

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
async def system(redis_url: str) -> AsyncIterator[InProcessSystem]:
    system = await start_system(redis_url, decode_workers=1)
    yield system
    await system.close()


@pytest.fixture
async def channel(system: InProcessSystem) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(system.grpc_address) as channel:
        yield channel


async def test_chat_streams_tokens_and_usage(channel: grpc.aio.Channel) -> None:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    request = router_pb2.ChatRequest(
        model=MODEL, messages=[router_pb2.ChatMessage(role="user", content="hello")],
        sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0))
    responses = [r async for r in stub.Chat(request)]
    assert sum(len(r.delta.token_ids) for r in responses) == 4
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert responses[-1].usage.completion_tokens == 4
    assert responses[0].engine.startswith("mock-simulated")
    assert len({r.request_id for r in responses}) == 1


async def test_complete_and_list_models(channel: grpc.aio.Channel) -> None:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    responses = [r async for r in stub.Complete(router_pb2.CompleteRequest(
        model=MODEL, prompt="abc", sampling=common_pb2.SamplingParams(max_tokens=2)))]
    assert responses[-1].usage.completion_tokens == 2
    models = await stub.ListModels(router_pb2.ListModelsRequest())
    assert [(m.id, m.decode_workers) for m in models.models] == [(MODEL, 1)]


@pytest.mark.parametrize(("request_message", "status", "code", "param"), [
    (router_pb2.ChatRequest(model="nope", messages=[router_pb2.ChatMessage(
        role="user", content="x")]), grpc.StatusCode.NOT_FOUND,
     common_pb2.ERROR_CODE_MODEL_NOT_FOUND, "model"),
    (router_pb2.ChatRequest(model=MODEL), grpc.StatusCode.INVALID_ARGUMENT,
     common_pb2.ERROR_CODE_INVALID_REQUEST, "messages"),
    (router_pb2.ChatRequest(model=MODEL, messages=[router_pb2.ChatMessage(
        role="wizard", content="x")]), grpc.StatusCode.INVALID_ARGUMENT,
     common_pb2.ERROR_CODE_INVALID_REQUEST, "messages[0].role"),
    (router_pb2.ChatRequest(model=MODEL, messages=[router_pb2.ChatMessage(
        role="user", content="x")], sampling=common_pb2.SamplingParams(max_tokens=10**6)),
     grpc.StatusCode.INVALID_ARGUMENT, common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
     "max_tokens"),
])
async def test_errors_carry_structured_detail(
    channel: grpc.aio.Channel, request_message: router_pb2.ChatRequest,
    status: grpc.StatusCode, code: int, param: str,
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.Chat(request_message):
            pass
    assert raised.value.code() == status
    error = from_rpc_error(raised.value)
    assert (error.code, error.param) == (code, param)


async def test_health_is_serving_after_the_canary(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="tandem.v1.RouterService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_is_not_serving_without_workers(redis_url: str) -> None:
    lonely = await start_system(redis_url, decode_workers=0)
    try:
        async with grpc.aio.insecure_channel(lonely.grpc_address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await lonely.close()


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(one_request()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"tandem.v1.RouterService", "grpc.health.v1.Health"} <= names
