"""OpenTelemetry set up in one place: traces and metrics for every service.

Traces go to OTLP when an endpoint is configured; tests install an in-memory exporter with
``install_span_exporter``. A process with neither records no spans at all (they are
non-recording, though trace ids still propagate): building spans that no exporter will ever
read cost the router ~10 % of its CPU per request.

Spans that live across ``yield`` in async generators (streams) are never made "current": their
context is passed explicitly, because a generator may be closed from another context. Metrics
are exposed for Prometheus through ``prometheus_client``'s default registry (served on each
service's metrics endpoint). W3C trace context travels in gRPC metadata through
``inject_metadata`` / ``extract_context``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


@dataclasses.dataclass(frozen=True)
class TelemetrySettings:
    """Where traces and metrics go."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector endpoint (e.g. http://127.0.0.1:4317); unset disables trace export."""
    trace_sample_ratio: float = 1.0
    """Fraction of new traces to sample (parent-based for propagated ones)."""


class ExportGatedSampler(Sampler):
    """``ParentBased(TraceIdRatioBased(ratio))`` while some exporter is installed, and drop
    (non-recording spans) before: a span nobody exports is pure cost on the hot path."""

    def __init__(self, ratio: float) -> None:
        self.exporting = False
        self._sampler = ParentBased(TraceIdRatioBased(ratio))
        self._drop = SamplingResult(Decision.DROP)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: trace.TraceState | None = None) -> SamplingResult:
        if not self.exporting:
            return self._drop
        return self._sampler.should_sample(parent_context, trace_id, name, kind, attributes,
                                           links, trace_state)

    def get_description(self) -> str:
        return f"ExportGated{{{self._sampler.get_description()}}}"


_provider: TracerProvider | None = None
_sampler: ExportGatedSampler | None = None


def setup_telemetry(service_name: str, settings: TelemetrySettings | None = None) -> None:
    """Installs the global tracer and meter providers for this process (idempotent)."""
    global _provider, _sampler
    settings = settings or TelemetrySettings()
    if _provider is not None:
        return
    resource = Resource.create({"service.name": service_name, "service.namespace": "tandem"})
    _sampler = ExportGatedSampler(settings.trace_sample_ratio)
    _provider = TracerProvider(resource=resource, sampler=_sampler)
    if settings.otlp_endpoint:
        _sampler.exporting = True
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        _provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(_provider)

    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    # Prometheus' text format carries no exemplars: offering every measurement to an exemplar
    # reservoir would be work for nothing.
    metrics.set_meter_provider(MeterProvider(
        resource=resource, metric_readers=[PrometheusMetricReader()],
        exemplar_filter=AlwaysOffExemplarFilter()))


def install_span_exporter(exporter: SpanExporter) -> SpanProcessor:
    """Adds a synchronous exporter (tests: ``InMemorySpanExporter``)."""
    if _provider is None:
        setup_telemetry("tandem-test")
    assert _provider is not None and _sampler is not None
    _sampler.exporting = True
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



AttributeKey = tuple[tuple[str, str | int], ...]


class Tally:
    """A counter kept in plain Python numbers and handed to the metrics reader when it
    collects (an observable counter). Adding costs a dict update instead of an SDK measurement
    (attribute hashing, locks, aggregation), which matters on paths that count several things
    per request. For one thread (an event loop): the reader collects in the thread that serves
    /metrics, and so must every ``add``. Made by ``tally``, one per name and process."""

    def __init__(self, meter_: metrics.Meter, name: str, unit: str, description: str,
                 up_down: bool) -> None:
        self._totals: dict[AttributeKey, float] = {}
        create = (meter_.create_observable_up_down_counter if up_down
                  else meter_.create_observable_counter)
        create(name, [self._observe], unit=unit, description=description)

    def add(self, amount: float, attributes: Mapping[str, str | int] | None = None) -> None:
        key: AttributeKey = tuple(attributes.items()) if attributes else ()
        self._totals[key] = self._totals.get(key, 0) + amount

    def _observe(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(total, dict(key)) for key, total in self._totals.items()]


_tallies: dict[str, Tally] = {}


def tally(name: str, *, unit: str, description: str, up_down: bool = False,
          scope: str = "tandem") -> Tally:
    """The process's tally of ``name`` (made on first use; later calls share it, as the SDK
    shares a synchronous instrument created twice under one name)."""
    existing = _tallies.get(name)
    if existing is None:
        existing = _tallies[name] = Tally(meter(scope), name, unit, description, up_down)
    return existing
