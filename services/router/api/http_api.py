"""The OpenAI-compatible HTTP API, as a small ASGI application (served by uvicorn).

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health,
GET /metrics. Errors are ``{"error": {"message", "type", "param", "code"}}``: 400 for invalid
input, 404 for an unknown model or path, 413 for an oversized body, 429 with Retry-After (and
retry-after-ms) when the fleet is at capacity, 503 when no worker can serve, 504 when the
request's deadline (``x-request-timeout`` seconds, or the router's default) passed; a stream
whose deadline passes after its first token ends with an error event of type
``timeout_error`` and ``[DONE]``. A streamed response sends its headers with the first token,
so a request that cannot be served still gets a real status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import prometheus_client
from opentelemetry import propagate, trace

from services.router.access import key_tenant, limited
from services.router.api.openai_auto_tools import AutoTools, ToolReaders
from services.router.api.openai_choices import Choices, Shape
from services.router.api.openai_format import DONE, ChunkWriter
from services.router.api.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    parse_request,
)
from services.router.api.sampling_schema import check_token_ids
from services.router.core.request import Delta, GenerationRequest
from services.router.fanout import choice_deltas, choice_requests
from services.router.generation import Generator
from services.router.metrics import RouterMetrics
from services.router.prompts import PromptBuilder
from services.router.routing import RouteChooser
from tandem.errors import TandemError, invalid
from tandem.stages import Stage, record_stage
from tandem.telemetry import tracer, tracing
from tandem.v1 import common_pb2

log = logging.getLogger(__name__)
_tracer = tracer("tandem.router")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no")]
_STATUS = {
    common_pb2.ERROR_CODE_INVALID_REQUEST: (400, "invalid_request_error"),
    common_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error"),
    common_pb2.ERROR_CODE_MODEL_NOT_FOUND: (404, "invalid_request_error"),
    common_pb2.ERROR_CODE_UNAVAILABLE: (503, "service_unavailable_error"),
    common_pb2.ERROR_CODE_INTERNAL: (500, "internal_server_error"),
    common_pb2.ERROR_CODE_RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    common_pb2.ERROR_CODE_DEADLINE_EXCEEDED: (504, "timeout_error"),
}
TIMEOUT_HEADER = "x-request-timeout"
"""The client's deadline for its request, in seconds (the router's --request-timeout-s bounds
it)."""


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected; nothing is left to answer."""


class OpenAIApp:
    """ASGI entry point."""

    def __init__(self, model: str, max_body_bytes: int, prompts: PromptBuilder,
                 generator: Generator, routing: RouteChooser, metrics: RouterMetrics,
                 auto_tools: AutoTools | None = None) -> None:
        self.model = model
        self.auto_tools = auto_tools
        """``tool_choice: "auto"`` (None: refused)."""
        self.max_body_bytes = max_body_bytes
        self.prompts = prompts
        self.generator = generator
        self.routing = routing
        self.metrics = metrics
        self.ready = False
        """Set once a canary request went through a worker."""
        self.routes: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("GET", "/v1/models"): self.list_models,
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("GET", "/health"): self.health,
            ("GET", "/metrics"): self.prometheus,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        handler = self.routes.get((method, path))
        if handler is None:
            known = any(p == path for _, p in self.routes)
            status = 405 if known else 404
            await _respond(send, status, orjson.dumps({"error": {
                "message": f"{method} {path} is not supported" if known else f"no route {path}",
                "type": "invalid_request_error", "param": None, "code": None}}))
            return
        if not tracing() and not _carries_trace(scope["headers"]):
            # Nothing exports spans and no trace context came in: no span to build.
            await self._handle(handler, scope, receive, send, trace.INVALID_SPAN)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with _tracer.start_as_current_span(
            f"{method} {path}", context=propagate.extract(headers), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span:
            await self._handle(handler, scope, receive, send, span)

    async def _handle(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]],
                      scope: Scope, receive: Receive, send: Send, span: trace.Span) -> None:
        try:
            await handler(scope, receive, send)
        except TandemError as error:
            status, error_type = _STATUS.get(error.code, (500, "internal_server_error"))
            span.set_attribute("http.response.status_code", status)
            await _respond(send, status, error_body(error, error_type),
                           _retry_headers(error.retry_after_ms))
        except ClientGone:
            span.set_attribute("tandem.client_disconnected", True)
        except BodyTooLarge:
            await _respond(send, 413, error_body(
                invalid(f"the request body exceeds {self.max_body_bytes} bytes"),
                "invalid_request_error"))

    # -- handlers -------------------------------------------------------------------------

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        workers = len(self.routing.decode_workers(self.model))
        healthy = self.ready and workers > 0
        status = "ok" if healthy else ("no workers" if self.ready else "starting")
        await _respond(send, 200 if healthy else 503,
                       orjson.dumps({"status": status, "decode_workers": workers}))

    async def prometheus(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, prometheus_client.generate_latest(),
                       [(b"content-type", prometheus_client.CONTENT_TYPE_LATEST.encode())])

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, orjson.dumps({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "tandem",
             "max_model_len": self.prompts.max_model_len}]}))

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = parse_request(await self._body(receive), ChatCompletionRequest)
        self._check_model(request.model)
        plan = request.tool_plan()
        readers: ToolReaders | None = None
        if plan is not None and plan.auto:  # the tools in the prompt, vLLM's parser after
            if self.auto_tools is None:
                raise invalid("tool_choice 'auto' is not served here", "tool_choice")
            readers = await self.auto_tools.readers(plan.tools)
            template = self.auto_tools.config.template
            tokens = self._timed_tokenize(lambda: self.prompts.chat(
                request.conversation(), list(plan.tools), template))
        else:
            tokens = self._timed_tokenize(lambda: self.prompts.chat(request.conversation()))
        await self._serve(True, request, tokens, receive, send, _client_timeout(scope), readers)

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = parse_request(await self._body(receive), CompletionRequest)
        self._check_model(request.model)
        prompt = request.prompt_text_or_tokens()
        tokens = self._timed_tokenize(lambda: self.prompts.completion(prompt))
        await self._serve(False, request, tokens, receive, send, _client_timeout(scope))

    # -- helpers --------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.model:
            raise TandemError(common_pb2.ERROR_CODE_MODEL_NOT_FOUND,
                              f"The model '{model}' does not exist", "model")

    def _timed_tokenize(self, tokenize: Callable[[], list[int]]) -> list[int]:
        started = time.perf_counter()
        tokens = tokenize()
        record_stage(Stage.TOKENIZE, time.perf_counter() - started)
        return tokens

    async def _body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _serve(self, chat: bool, request: ChatCompletionRequest | CompletionRequest,
                     tokens: list[int], receive: Receive, send: Send,
                     timeout_s: float | None = None, readers: ToolReaders | None = None
                     ) -> None:
        sampling = request.sampling()
        self.prompts.check_length(len(tokens), sampling.max_tokens)
        check_token_ids(sampling, self.prompts.vocab_size)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({
                "gen_ai.operation.name": "chat" if chat else "text_completion",
                "gen_ai.request.model": request.model, "tandem.request_id": request_id,
                "gen_ai.request.max_tokens": sampling.max_tokens or 0,
                "gen_ai.request.temperature": sampling.temperature if sampling.temperature
                is not None else 1.0,
                "gen_ai.request.choice.count": request.choices,
                "gen_ai.usage.input_tokens": len(tokens)})
        generation = GenerationRequest(request_id, request.model, tokens, sampling,
                                       tenant=key_tenant(request.user or "", label_only=True),
                                       timeout_s=timeout_s)
        deltas = limited(
            choice_deltas(self.generator, choice_requests(generation, request.choices)),
            len(tokens), sampling.max_tokens, request.choices)
        choices = Choices(self._shape(request, tokens, readers), request.choices)
        created = int(time.time())
        watch = DisconnectWatch(receive)
        try:
            with watch:
                if request.stream:
                    await self._stream(request, request_id, created, deltas, choices, send)
                else:
                    await self._collect(request.model, request_id, created, deltas, choices,
                                        send)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            log.info("client disconnected; request aborted", extra={"request_id": request_id})
            raise ClientGone from None

    def _shape(self, request: ChatCompletionRequest | CompletionRequest,
               tokens: list[int], readers: ToolReaders | None = None) -> Shape:
        if isinstance(request, ChatCompletionRequest):
            return Shape(True, request.logprobs_wanted() is not None, request.tool_plan(),
                         auto=readers)
        echo = ""
        if request.echo:
            prompt = request.prompt_text_or_tokens()
            echo = prompt if isinstance(prompt, str) else self.prompts.decode(tokens)
        first = None
        if request.prompt_logprobs_wanted() is not None:
            first = self.prompts.decode(tokens[:1])
        return Shape(False, request.logprobs_wanted() is not None, echo=echo, echo_first=first)

    async def _collect(self, model: str, request_id: str, created: int,
                       deltas: AsyncIterator[tuple[int, Delta]], choices: Choices,
                       send: Send) -> None:
        async for index, delta in deltas:
            choices.add(index, delta)
        _finish_span(choices)
        await _respond(send, 200, choices.response(request_id, model, created))

    async def _stream(self, request: ChatCompletionRequest | CompletionRequest,
                      request_id: str, created: int, deltas: AsyncIterator[tuple[int, Delta]],
                      choices: Choices, send: Send) -> None:
        chat = choices.shape.chat
        iterator = aiter(deltas)
        first = await anext(iterator)  # errors before the first token keep their status
        include_usage = request.include_usage
        writer = ChunkWriter(chat, request_id, request.model, created, first[1].engine,
                             with_usage_field=include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        # One write per worker message (which carries every token the worker had ready); the
        # role chunk rides with the first token and the last token with the usage and [DONE].
        body = writer.first_chunk() if chat else b""
        item: tuple[int, Delta] | None = first
        hold_last = request.choices == 1  # the last chunk leaves with the usage and [DONE]
        try:
            while item is not None:
                index, delta = item
                body += choices.chunk(writer, index, delta)
                if not (hold_last and delta.finish_reason) and body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    body = b""
                item = await anext(iterator, None)
        except TandemError as error:
            # Headers are gone: report the failure in-stream, the way OpenAI does.
            error_type = ("timeout_error" if error.code == common_pb2.ERROR_CODE_DEADLINE_EXCEEDED
                          else "server_error")
            body += b"data: " + error_body(error, error_type) + b"\n\n"
        else:
            _finish_span(choices)
            if include_usage:
                body += writer.usage_chunk(choices.usage())
        await send({"type": "http.response.body", "body": body + DONE, "more_body": False})


_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def _carries_trace(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request carries a W3C trace context (or baggage) to pass on."""
    return any(key in _TRACE_HEADERS for key, _ in headers)


def _client_timeout(scope: Scope) -> float | None:
    """The client's deadline (``x-request-timeout``, seconds), None when it sets none."""
    for key, value in scope["headers"]:
        if key == b"x-request-timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = float("nan")
            if not 0 < seconds < float("inf"):
                raise invalid(f"{TIMEOUT_HEADER} must be a positive number of seconds, not "
                              f"{value.decode('latin-1')!r}", TIMEOUT_HEADER)
            return seconds
    return None


def _retry_headers(retry_after_ms: int | None) -> list[tuple[bytes, bytes]]:
    """Retry-After in whole seconds (RFC 9110, rounded up) and OpenAI's retry-after-ms."""
    if retry_after_ms is None:
        return _JSON
    seconds = max(1, -(-retry_after_ms // 1000))
    return [*_JSON, (b"retry-after", str(seconds).encode()),
            (b"retry-after-ms", str(retry_after_ms).encode())]


def _finish_span(choices: Choices) -> None:
    trace.get_current_span().set_attributes({
        "gen_ai.usage.output_tokens": choices.usage()["completion_tokens"],
        "gen_ai.response.finish_reasons": [
            choice.last.finish_reason or "" if choice.last else ""
            for choice in choices.choices],
        "http.response.status_code": 200})


async def _respond(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or _JSON})
    await send({"type": "http.response.body", "body": body})


class DisconnectWatch:
    """Cancels the current task when the client goes away, so the request is aborted
    upstream (decode slot and KV blocks freed) instead of generating into the void."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.disconnected = False
        self._watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> DisconnectWatch:
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while (await self.receive())["type"] != "http.disconnect":
                pass
            self.disconnected = True
            task.cancel()

        self._watcher = asyncio.create_task(watch())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._watcher is not None
        self._watcher.cancel()
