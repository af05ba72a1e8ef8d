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
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from annotated_types import Interval
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
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

from tandem.service.settings import Settings

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


@dataclasses.dataclass(frozen=True)
class TelemetrySettings(Settings):
    """Where logs, traces and metrics go (a shared settings group of every service)."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector for traces (e.g. http://127.0.0.1:4317); unset: traces are not
    exported."""
    trace_sample_ratio: Annotated[float, Interval(ge=0, le=1)] = 1.0
    """Fraction of new traces to sample (parent-based for propagated ones)."""
    log_level: LogLevel = "info"
    """Log level."""
    metrics_port: Annotated[int, Interval(ge=0, le=65535)] | None = None
    """Port of the Prometheus /metrics endpoint on the service's host (unset: not served
    apart; the router also serves /metrics on its HTTP port)."""


class _ProcessSpanProcessors(SpanProcessor):
    """The span processors of this process. A process forked from a set-up one (vLLM's engine
    core, forked from a worker) inherits the tracer provider but drops its parent's processors:
    their exporters hold the parent's connections; the child installs its own
    (``setup_tracing``)."""

    def __init__(self) -> None:
        self.processors: list[SpanProcessor] = []

    def add(self, processor: SpanProcessor) -> None:
        self.processors = [*self.processors, processor]

    def forget(self) -> None:
        self.processors = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.processors:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self.processors)


class ExportGatedSampler(Sampler):
    """``ParentBased(TraceIdRatioBased(ratio))`` while ``exporting()`` (some exporter is
    installed in this process), and drop (non-recording spans) otherwise: a span nobody
    exports is pure cost on the hot path."""

    def __init__(self, ratio: float, exporting: Callable[[], bool]) -> None:
        self.exporting = exporting
        self._sampler = ParentBased(TraceIdRatioBased(ratio))
        self._drop = SamplingResult(Decision.DROP)

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None,
                      trace_state: trace.TraceState | None = None) -> SamplingResult:
        if not self.exporting():
            return self._drop
        return self._sampler.should_sample(parent_context, trace_id, name, kind, attributes,
                                           links, trace_state)

    def get_description(self) -> str:
        return f"ExportGated{{{self._sampler.get_description()}}}"


_provider: TracerProvider | None = None
_processors = _ProcessSpanProcessors()
_exporting_pid: int | None = None
"""The process whose OTLP exporter is installed (None: none is)."""
os.register_at_fork(after_in_child=_processors.forget)


def _install_tracer_provider(service_name: str, settings: TelemetrySettings) -> Resource:
    global _provider
    resource = Resource.create({"service.name": service_name, "service.namespace": "tandem"})
    _provider = TracerProvider(resource=resource, sampler=ExportGatedSampler(
        settings.trace_sample_ratio, lambda: bool(_processors.processors)))
    _provider.add_span_processor(_processors)
    _install_otlp(settings)
    # In vLLM's worker processes vLLM installs the global provider first; tandem's spans use
    # tandem's provider all the same (``tracer``).
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_provider)
    return resource


def _install_otlp(settings: TelemetrySettings) -> None:
    global _exporting_pid
    if not settings.otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    _processors.add(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
    )
    _exporting_pid = os.getpid()


def setup_telemetry(service_name: str, settings: TelemetrySettings | None = None) -> None:
    """Installs the global tracer and meter providers for this process (idempotent)."""
    if _provider is not None:
        return
    resource = _install_tracer_provider(service_name, settings or TelemetrySettings())

    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    # Prometheus' text format carries no exemplars: offering every measurement to an exemplar
    # reservoir would be work for nothing.
    metrics.set_meter_provider(MeterProvider(
        resource=resource, metric_readers=[PrometheusMetricReader()],
        exemplar_filter=AlwaysOffExemplarFilter()))


def setup_tracing(service_name: str, settings: TelemetrySettings) -> None:
    """Traces only, for a process that serves no metrics (tandem's KV connector in a process of
    vLLM's). In a process forked from a set-up one, the inherited provider (and its service
    name) stays and this process's own OTLP exporter is added once; otherwise as
    ``setup_telemetry`` without metrics."""
    if _provider is None:
        _install_tracer_provider(service_name, settings)
    elif _exporting_pid != os.getpid():
        _install_otlp(settings)


def install_span_exporter(exporter: SpanExporter) -> SpanProcessor:
    """Adds a synchronous exporter (tests: ``InMemorySpanExporter``)."""
    if _provider is None:
        setup_telemetry("tandem-test")
    processor = SimpleSpanProcessor(exporter)
    _processors.add(processor)
    return processor


class _TandemTracer(trace.Tracer):
    """A tracer of this process's tandem provider once it is set up (the global one before):
    module-level tracers exist before setup, and in a process where another library owns the
    global provider (vLLM's workers) tandem's spans still go where tandem's settings say."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._resolved: tuple[object, trace.Tracer] | None = None

    def _tracer(self) -> trace.Tracer:
        provider = _provider or trace.get_tracer_provider()
        if self._resolved is None or self._resolved[0] is not provider:
            self._resolved = (provider, provider.get_tracer(self._name))
        return self._resolved[1]

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracer().start_as_current_span(*args, **kwargs)


def tracing() -> bool:
    """Whether this process exports spans (an exporter is installed). While it does not, every
    span would be non-recording: the router's hot path then builds none at all and passes its
    parent's context on as it is (an incoming trace context still reaches the workers)."""
    return bool(_processors.processors)


def tracer(name: str) -> trace.Tracer:
    return _TandemTracer(name)


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
