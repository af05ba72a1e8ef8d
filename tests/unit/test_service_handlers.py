"""The gRPC handler wrapper: a server span with the RPC attributes, and a ``TandemError`` ends
the call with its status and its detail in the trailers — for unary and streaming handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.errors import ERROR_METADATA_KEY, invalid
from tandem.service.handlers import rpc
from tandem.v1 import common_pb2

SERVICE = "tandem.v1.TestService"


class Aborted(Exception):
    """What ``context.abort`` raises in grpc.aio."""


class FakeContext:
    """The parts of ``grpc.aio.ServicerContext`` the wrapper uses."""

    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, bytes], ...] = ()
        self.status: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)

    def set_trailing_metadata(self, trailers: tuple[tuple[str, bytes], ...]) -> None:
        self.trailers = trailers

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = code
        raise Aborted(details)


class Servicer:
    closed = False
    @rpc(SERVICE)
    async def Unary(self, request: str, context: Any, span: trace.Span) -> str:
        span.set_attribute("tandem.request", request)
        assert trace.get_current_span() is span  # a unary handler runs with its span current
        if request == "bad":
            raise invalid("bad request", "prompt")
        return request.upper()

    @rpc(SERVICE)
    async def Stream(self, request: str, context: Any, span: trace.Span) -> AsyncIterator[str]:
        for item in request:
            if item == "!":
                raise invalid("bang", "prompt")
            yield item

    @rpc(SERVICE)
    async def Endless(self, request: str, context: Any, span: trace.Span
                      ) -> AsyncIterator[str]:
        try:
            while True:
                yield request
        finally:
            self.closed = True  # where an engine request would be aborted

    @rpc(SERVICE, span=False)
    async def Plain(self, request: str, context: Any) -> str:
        if request == "bad":
            raise invalid("plain bad")
        return request


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [item async for item in stream]


def _detail(context: FakeContext) -> common_pb2.ErrorDetail:
    (key, value), = context.trailers
    assert key == ERROR_METADATA_KEY
    return common_pb2.ErrorDetail.FromString(value)


async def test_unary_ok_records_a_server_span_under_the_callers_trace(
        exporter: InMemorySpanExporter) -> None:
    assert await Servicer().Unary("hi", FakeContext()) == "HI"
    (span,) = [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/Unary"]
    assert span.kind == trace.SpanKind.SERVER
    assert dict(span.attributes or {}) == {"rpc.system": "grpc", "rpc.service": SERVICE,
                                           "rpc.method": "Unary", "tandem.request": "hi"}
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"


@pytest.mark.parametrize(("call", "message"), [
    (lambda servicer, context: servicer.Unary("bad", context), "bad request"),
    (lambda servicer, context: _collect(servicer.Stream("ab!c", context)), "bang"),
    (lambda servicer, context: servicer.Plain("bad", context), "plain bad"),
])
async def test_a_tandem_error_ends_the_call_with_status_and_detail(
        call: Any, message: str, exporter: InMemorySpanExporter) -> None:
    context = FakeContext()
    with pytest.raises(Aborted, match=message):
        await call(Servicer(), context)
    assert context.status == grpc.StatusCode.INVALID_ARGUMENT
    assert _detail(context).message == message
    assert _detail(context).code == common_pb2.ERROR_CODE_INVALID_REQUEST


async def test_a_stream_yields_everything_and_its_span_ends_with_the_error(
        exporter: InMemorySpanExporter) -> None:
    assert await _collect(Servicer().Stream("abc", FakeContext())) == ["a", "b", "c"]
    with pytest.raises(Aborted):
        await _collect(Servicer().Stream("a!", FakeContext()))
    ended = [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/Stream"]
    assert [s.status.status_code for s in ended] == [trace.StatusCode.UNSET,
                                                    trace.StatusCode.ERROR]


async def test_span_false_records_no_server_span(exporter: InMemorySpanExporter) -> None:
    assert await Servicer().Plain("x", FakeContext()) == "x"
    assert not [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/Plain"]


async def test_a_stream_closed_early_closes_the_handler_at_once(
        exporter: InMemorySpanExporter) -> None:
    """A cancelled call (the client went away) must abort what the handler runs now, not when
    its generator is garbage-collected."""
    servicer = Servicer()
    servicer.closed = False
    stream = servicer.Endless("x", FakeContext())
    assert await anext(stream) == "x"
    await stream.aclose()
    assert servicer.closed
    assert [s.name for s in exporter.get_finished_spans()] == [f"{SERVICE}/Endless"]
