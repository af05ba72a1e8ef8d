"""Telemetry set-up: the export-gated sampler (no recording spans until something exports
them) and tallies (counters kept in Python numbers, read at collection)."""

from __future__ import annotations

import prometheus_client
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.telemetry import ExportGatedSampler, setup_telemetry, tally


@pytest.mark.parametrize(("exporting", "ratio", "recorded"), [
    (False, 1.0, False),  # nothing exports: spans cost nothing
    (True, 1.0, True),
    (True, 0.0, False),  # the configured ratio still applies once exporting
])
def test_spans_are_recorded_only_while_exporting(exporting: bool, ratio: float,
                                                 recorded: bool) -> None:
    sampler = ExportGatedSampler(ratio, lambda: exporting)
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (tracer.start_as_current_span("parent") as parent,
          tracer.start_as_current_span("child") as child):
        assert child.is_recording() is recorded
        # Dropped or not, the trace id travels (logs and propagation keep working).
        assert child.get_span_context().trace_id == parent.get_span_context().trace_id
        assert child.get_span_context().trace_id != 0
    assert len(exporter.get_finished_spans()) == (2 if recorded else 0)


def test_a_dropped_parent_is_honoured_downstream() -> None:
    """A root dropped for lack of an exporter propagates its decision (parent-based)."""
    upstream = TracerProvider(sampler=ExportGatedSampler(1.0, lambda: False)).get_tracer("up")
    downstream = TracerProvider(sampler=ExportGatedSampler(1.0, lambda: True)).get_tracer("down")
    from opentelemetry import trace
    with upstream.start_as_current_span("root") as root:
        assert not root.is_recording()
        child = downstream.start_span("child", context=trace.set_span_in_context(root))
        assert not child.is_recording()
        child.end()


def _samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel")
                         and k not in ("job", "instance"))): sample.value
            for metric in prometheus_client.REGISTRY.collect() for sample in metric.samples
            if sample.name == name}


def test_tallies_export_as_counters_and_are_shared_by_name() -> None:
    setup_telemetry("tandem-test")
    requests = tally("test.tally.requests", unit="{request}", description="test")
    assert tally("test.tally.requests", unit="{request}", description="test") is requests
    requests.add(1, {"outcome": "ok"})
    requests.add(2, {"outcome": "ok"})
    requests.add(1, {"outcome": "error"})
    assert _samples("test_tally_requests_total") == {
        (("outcome", "ok"),): 3, (("outcome", "error"),): 1}
    running = tally("test.tally.running", unit="{request}", description="test", up_down=True)
    running.add(1)
    running.add(1)
    running.add(-1)
    assert _samples("test_tally_running") == {(): 1}
