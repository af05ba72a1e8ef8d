"""gRPC RouterService: the HTTP API's capabilities for clients in any language."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace

from services.router.access import Access, current, key_tenant, limited
from services.router.api.openai_auto_tools import AutoTools
from services.router.api.openai_grpc import (
    ResponseFields,
    constrained,
    conversation,
    readers_for,
    tool_plan,
)
from services.router.api.sampling_schema import MAX_CHOICES, check_sampling, check_token_ids
from services.router.core.request import Delta, GenerationRequest
from services.router.fanout import choice_deltas, choice_requests
from services.router.generation import Generator
from services.router.prompts import PromptBuilder
from services.router.routing import RouteChooser
from tandem.errors import TandemError, abort_with, invalid
from tandem.protocol import sampling_from_proto
from tandem.service.grpc import ROUTER_SERVICE
from tandem.service.handlers import rpc
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

_ROLES = {"system", "developer", "user", "assistant", "tool"}


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, model: str, prompts: PromptBuilder, generator: Generator,
                 routing: RouteChooser, auto_tools: AutoTools | None = None) -> None:
        self.model = model
        self.auto_tools = auto_tools
        """``tool_choice`` "auto" (None: refused)."""
        self.prompts = prompts
        self.generator = generator
        self.routing = routing

    @rpc(ROUTER_SERVICE)
    async def Chat(
        self, request: router_pb2.ChatRequest, context: grpc.aio.ServicerContext,
        span: trace.Span,
    ) -> AsyncIterator[router_pb2.ChatResponse]:
        async with contextlib.aclosing(self._run(request, span, chat=True,
                                               timeout_s=context.time_remaining())) as deltas:
            async for index, delta, request_id, shaper in deltas:
                yield router_pb2.ChatResponse(**shaper.fields(index, delta, request_id))  # type: ignore[arg-type]

    @rpc(ROUTER_SERVICE)
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext,
        span: trace.Span,
    ) -> AsyncIterator[router_pb2.CompleteResponse]:
        async with contextlib.aclosing(self._run(request, span, chat=False,
                                               timeout_s=context.time_remaining())) as deltas:
            async for index, delta, request_id, shaper in deltas:
                yield router_pb2.CompleteResponse(**shaper.fields(index, delta, request_id))  # type: ignore[arg-type]

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
        self._check_model(model)
        tokens = self.prompts.completion(request.prompt)
        self.prompts.check_length(len(tokens), None)  # what Complete would refuse
        route = self.routing.choose(model, key_tenant(request.tenant, label_only=False),
                                    tokens, set())
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
        chat: bool, timeout_s: float | None = None,
    ) -> AsyncGenerator[tuple[int, Delta, str, ResponseFields], None]:
        """``timeout_s``: what is left of the call's deadline (None: it has none)."""
        self._check_model(request.model)
        sampling = sampling_from_proto(request.sampling)
        check_sampling(sampling, "sampling.")
        check_token_ids(sampling, self.prompts.vocab_size, "sampling.")
        if request.n > MAX_CHOICES:
            raise invalid(f"n: at most {MAX_CHOICES}", "n")
        if isinstance(request, router_pb2.ChatRequest):
            _check_roles(request)
            plan = tool_plan(request)
            sampling = constrained(sampling, plan)
            readers = await readers_for(plan, self.auto_tools)
            if readers is not None and plan is not None and self.auto_tools is not None:
                tokens = self.prompts.chat(conversation(request, plan), list(plan.tools),
                                           self.auto_tools.config.template)
            else:
                tokens = self.prompts.chat(conversation(request, plan))
            shaper = ResponseFields(request.n or 1, plan, readers)
        else:
            tokens = self.prompts.completion(request.prompt)
            shaper = ResponseFields(request.n or 1, None, None,
                                    request.prompt if request.echo else "")
        self.prompts.check_length(len(tokens), sampling.max_tokens)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        generation = GenerationRequest(request_id, request.model, tokens, sampling,
                                       tenant=key_tenant(request.tenant, label_only=False),
                                       timeout_s=timeout_s)
        stream = limited(choice_deltas(self.generator,
                                       choice_requests(generation, request.n or 1),
                                       trace.set_span_in_context(span)),
                         len(tokens), sampling.max_tokens, request.n or 1)
        async with contextlib.aclosing(stream) as deltas:  # a cancelled call aborts at once
            async for index, delta in deltas:
                yield index, delta, request_id, shaper

    def _check_model(self, model: str) -> None:
        if model != self.model:
            raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                              f"The model '{model}' does not exist", "model")


def add_router_service(servicer: RouterServicer, server: grpc.aio.Server,
                       access: Access | None = None) -> None:
    """Registers ``servicer`` as the generated ``add_RouterServiceServicer_to_server`` does,
    except that bytes which are no valid request message (garbage, truncated, strings that are
    not UTF-8) end the call with INVALID_ARGUMENT naming the message type: grpc's own parsing
    failure ends it with UNKNOWN ("Unexpected DecodeError"). With ``access`` (API keys on),
    every call needs ``authorization: Bearer <key>`` metadata (UNAUTHENTICATED otherwise)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in router_pb2.DESCRIPTOR.services_by_name["RouterService"].methods:
        request_type = getattr(router_pb2, method.input_type.name)
        reply_type = getattr(router_pb2, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming_checked(behaviour, access), request_deserializer=_parser(request_type),
                response_serializer=reply_type.SerializeToString)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_checked(behaviour, access), request_deserializer=_parser(request_type),
                response_serializer=reply_type.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ROUTER_SERVICE, handlers),))
    server.add_registered_method_handlers(ROUTER_SERVICE, handlers)


class _Unparsable:
    """What the deserializer hands the handler for bytes that are no request message."""

    def __init__(self, error: TandemError) -> None:
        self.error = error


def _parser(request_type: type[Message]) -> Callable[[bytes], Message | _Unparsable]:
    def parse(raw: bytes) -> Message | _Unparsable:
        try:
            return request_type.FromString(raw)
        except DecodeError as error:
            return _Unparsable(invalid(
                f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}"))

    return parse


async def _authenticate(access: Access | None, context: grpc.aio.ServicerContext) -> None:
    """The caller of this call (its task's ``access.current``), when keys are on."""
    if access is None:
        return
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            authorization = value
            break
    try:
        current.set(await access.authenticate(authorization))
    except TandemError as error:
        await abort_with(context, error)


def _unary_checked(behaviour: Callable[..., Awaitable[Message]], access: Access | None,
                   ) -> Callable[..., Awaitable[Message]]:
    async def call(request: Message | _Unparsable, context: grpc.aio.ServicerContext
                   ) -> Message:
        if isinstance(request, _Unparsable):
            await abort_with(context, request.error)
        await _authenticate(access, context)
        return await behaviour(request, context)

    return call


def _streaming_checked(behaviour: Callable[..., AsyncGenerator[Message, None]],
                       access: Access | None) -> Callable[..., AsyncIterator[Message]]:
    async def call(request: Message | _Unparsable, context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[Message]:
        if isinstance(request, _Unparsable):
            await abort_with(context, request.error)
        await _authenticate(access, context)
        async with contextlib.aclosing(behaviour(request, context)) as replies:
            async for reply in replies:
                yield reply

    return call


def _check_roles(request: router_pb2.ChatRequest) -> None:
    if not request.messages:
        raise invalid("messages must not be empty", "messages")
    for index, message in enumerate(request.messages):
        if message.role not in _ROLES:
            raise invalid(f"unknown role {message.role!r}", f"messages[{index}].role")
