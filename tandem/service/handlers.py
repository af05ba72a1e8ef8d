"""One wrapper for every gRPC handler: the server span (OpenTelemetry RPC conventions, parent
from the call's W3C metadata) and the mapping of ``TandemError`` to a status code with its
``ErrorDetail`` in the trailers.

    class DecodeServicer(worker_pb2_grpc.DecodeServiceServicer):
        @rpc(DECODE_SERVICE)
        async def Generate(self, request, context, span): ...   # a stream: yields

        @rpc(KVSTORE_SERVICE, span=False)
        async def Lookup(self, request, context): ...            # unary, no server span

A handler with a span gets it as its last argument. A unary handler runs with the span
current; a streaming one never does (telemetry.py: a generator may be closed from another
context), so it passes ``trace.set_span_in_context(span)`` on explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from opentelemetry import trace

from tandem.errors import TandemError, abort_with
from tandem.telemetry import extract_context, tracer

_tracer = tracer("tandem.rpc")

Handler = Callable[..., Any]


def _server_span(service: str, method: str, context: grpc.aio.ServicerContext) -> trace.Span:
    return _tracer.start_span(
        f"{service}/{method}", context=extract_context(context.invocation_metadata()),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})


async def _fail(context: grpc.aio.ServicerContext, error: TandemError,
                span: trace.Span | None) -> None:
    if span is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
    await abort_with(context, error)


def rpc(service: str, *, span: bool = True) -> Callable[[Handler], Handler]:
    """Wraps a servicer method of ``service`` (its full name: ``tandem.service.grpc``'s
    constants); ``span=False`` for handlers that record spans of their own kind."""

    def wrap(handler: Handler) -> Handler:
        method = handler.__name__
        if inspect.isasyncgenfunction(handler):
            @functools.wraps(handler)
            async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
                server_span = _server_span(service, method, context) if span else None
                args = (server_span,) if server_span is not None else ()
                try:
                    # aclosing: when the call ends early (cancelled, client gone), the
                    # handler's own generator closes now, not when it is collected, so what
                    # it runs (an engine request) is aborted at once.
                    messages = handler(self, request, context, *args)
                    async with contextlib.aclosing(messages) as stream:
                        async for message in stream:
                            yield message
                except TandemError as error:
                    await _fail(context, error, server_span)
                finally:
                    if server_span is not None:
                        server_span.end()

            return streaming

        @functools.wraps(handler)
        async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            if not span:
                try:
                    return await handler(self, request, context)
                except TandemError as error:
                    await _fail(context, error, None)
            server_span = _server_span(service, method, context)
            with trace.use_span(server_span, end_on_exit=True):
                try:
                    return await handler(self, request, context, server_span)
                except TandemError as error:
                    await _fail(context, error, server_span)

        return unary

    return wrap
