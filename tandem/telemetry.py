"""OpenTelemetry set up in one place: traces and metrics for every service.

Traces go to OTLP when an endpoint is configured; tests install an in-memory exporter with
``install_span_exporter``. Spans that live across ``yield`` in async generators (streams) are
never made "current": their context is passed explicitly, because a generator may be closed
from another context. Metrics are exposed for Prometheus through ``prometheus_client``'s
default registry (served on each service's metrics endpoint). W3C trace context travels in
gRPC metadata through ``inject_metadata`` / ``extract_context``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)


@dataclasses.dataclass(frozen=True)
class TelemetrySettings:
    """Where traces and metrics go."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector endpoint (e.g. http://127.0.0.1:4317); unset disables trace export."""
    trace_sample_ratio: float = 1.0
    """Fraction of new traces to sample (parent-based for propagated ones)."""


_provider: TracerProvider | None = None


def setup_telemetry(service_name: str, settings: TelemetrySettings | None = None) -> None:
    """Installs the global tracer and meter providers for this process (idempotent)."""
    global _provider
    settings = settings or TelemetrySettings()
    if _provider is not None:
        return
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": service_name, "service.namespace": "tandem"})
    _provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
    )
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        _provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(_provider)

    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
    )


def install_span_exporter(exporter: SpanExporter) -> SpanProcessor:
    """Adds a synchronous exporter (tests: ``InMemorySpanExporter``)."""
    if _provider is None:
        setup_telemetry("tandem-test")
    assert _provider is not None
    processor = SimpleSpanProcessor(exporter)
    _provider.add_span_processor(processor)
    return processor


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def inject_metadata(
    metadata: Sequence[tuple[str, str]] = (), context: Context | None = None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata with the W3C trace context (of ``context``, default the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return (*metadata, *carrier.items())


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context carried by incoming gRPC metadata."""
    carrier = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
    return propagate.extract(carrier)


def context_from_headers(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by W3C headers (``trace_headers`` of an engine request)."""
    return propagate.extract(dict(headers or {}))


def trace_headers(context: Context | None = None) -> dict[str, str]:
    """The W3C trace context as headers (passed into engines)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier
