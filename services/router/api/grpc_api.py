"""gRPC RouterService: the HTTP API's capabilities for clients in any language."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from opentelemetry import trace

from services.router.core.request import Delta, GenerationRequest
from services.router.generation import Generator
from services.router.prompts import PromptBuilder
from services.router.routing import RouteChooser
from tandem.errors import TandemError, invalid
from tandem.protocol import FINISH_TO_PROTO, sampling_from_proto
from tandem.service.grpc import ROUTER_SERVICE
from tandem.service.handlers import rpc
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

_ROLES = {"system", "developer", "user", "assistant", "tool"}


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, model: str, prompts: PromptBuilder, generator: Generator,
                 routing: RouteChooser) -> None:
        self.model = model
        self.prompts = prompts
        self.generator = generator
        self.routing = routing

    @rpc(ROUTER_SERVICE)
    async def Chat(
        self, request: router_pb2.ChatRequest, context: grpc.aio.ServicerContext,
        span: trace.Span,
    ) -> AsyncIterator[router_pb2.ChatResponse]:
        async with contextlib.aclosing(self._run(request, span, chat=True)) as deltas:
            async for delta, request_id in deltas:
                yield router_pb2.ChatResponse(**_fields(delta, request_id))  # type: ignore[arg-type]

    @rpc(ROUTER_SERVICE)
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext,
        span: trace.Span,
    ) -> AsyncIterator[router_pb2.CompleteResponse]:
        async with contextlib.aclosing(self._run(request, span, chat=False)) as deltas:
            async for delta, request_id in deltas:
                yield router_pb2.CompleteResponse(**_fields(delta, request_id))  # type: ignore[arg-type]

    @rpc(ROUTER_SERVICE, span=False)
    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListModelsResponse:
        workers = self.routing.watcher.workers.values()
        return router_pb2.ListModelsResponse(models=[router_pb2.ModelInfo(
            id=self.model, max_model_len=self.prompts.max_model_len,
            decode_workers=sum(w.role == "decode" for w in workers),
            prefill_workers=sum(w.role == "prefill" for w in workers))])

    @rpc(ROUTER_SERVICE, span=False)
    async def ExplainRoute(
        self, request: router_pb2.ExplainRouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ExplainRouteResponse:
        model = request.model or self.model
        tokens = self.prompts.completion(request.prompt)
        route = self.routing.choose(model, request.tenant, tokens, set())
        if route is None:
            raise TandemError(common_pb2.ERROR_CODE_UNAVAILABLE,
                              f"no live decode worker serves {model!r}")
        return router_pb2.ExplainRouteResponse(
            decode_worker_id=route.worker.worker_id,
            prefill_worker_id=route.prefill.worker_id if route.prefill else "",
            prefill_reason=route.prefill_reason,
            prompt_blocks=route.decision.prompt_blocks,
            candidates=[router_pb2.RouteCandidate(
                worker_id=c.worker_id, device_overlap_blocks=c.device_overlap_blocks,
                store_overlap_blocks=c.store_overlap_blocks, load=c.load, cost=c.cost)
                for c in route.decision.candidates])

    async def _run(
        self, request: router_pb2.ChatRequest | router_pb2.CompleteRequest, span: trace.Span,
        chat: bool,
    ) -> AsyncGenerator[tuple[Delta, str], None]:
        if request.model != self.model:
            raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                              f"The model '{request.model}' does not exist", "model")
        if isinstance(request, router_pb2.ChatRequest):
            tokens = self.prompts.chat(_conversation(request))
        else:
            tokens = self.prompts.completion(request.prompt)
        sampling = sampling_from_proto(request.sampling)
        self.prompts.check_length(len(tokens), sampling.max_tokens)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        generation = GenerationRequest(request_id, request.model, tokens, sampling,
                                       tenant=request.tenant)
        stream = self.generator.stream(generation, trace.set_span_in_context(span))
        async with contextlib.aclosing(stream) as deltas:  # a cancelled call aborts at once
            async for delta in deltas:
                yield delta, request_id


def _conversation(request: router_pb2.ChatRequest) -> list[dict[str, str]]:
    if not request.messages:
        raise invalid("messages must not be empty", "messages")
    for index, message in enumerate(request.messages):
        if message.role not in _ROLES:
            raise invalid(f"unknown role {message.role!r}", f"messages[{index}].role")
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
            for m in request.messages]


def _fields(delta: Delta, request_id: str) -> dict[str, object]:
    fields: dict[str, object] = {
        "delta": common_pb2.TokenDelta(token_ids=delta.token_ids, text=delta.text),
        "request_id": request_id, "engine": delta.engine}
    if delta.finish_reason is not None:
        fields["finish_reason"] = FINISH_TO_PROTO[delta.finish_reason]
        fields["usage"] = common_pb2.Usage(
            prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens,
            cached_tokens=delta.cached_tokens)
    return fields
