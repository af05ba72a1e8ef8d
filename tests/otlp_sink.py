"""A minimal OTLP/gRPC trace receiver for tests: services started as processes export their
spans to it (``--otlp-endpoint``), and the test reads them back as plain ``SinkSpan``s."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

BATCH_DELAY_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
"""Environment for child processes: export batches every 100 ms instead of every 5 s."""


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclasses.dataclass(frozen=True)
class SinkEvent:
    name: str
    attributes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SinkSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[SinkEvent]


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """``with OtlpSink() as sink:`` serves on ``sink.endpoint`` until the block exits."""

    def __init__(self) -> None:
        self.spans: list[SinkSpan] = []
        self.raw: list[bytes] = []
        """Every export request as received (what a scan for leaked secrets reads)."""
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> OtlpSink:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name"))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(SinkSpan(
                        service=service, name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind, attributes=_attributes(span.attributes),
                        events=[SinkEvent(e.name, _attributes(e.attributes))
                                for e in span.events]))
        with self._lock:
            self.spans.extend(received)
            self.raw.append(request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, done: Callable[[list[SinkSpan]], bool],
                 timeout_s: float = 20.0) -> list[SinkSpan]:
        """The spans received once ``done(spans)`` holds (fails after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({s.name for s in spans})
                raise AssertionError(f"spans not received in {timeout_s} s; got {names}")
            time.sleep(0.05)
