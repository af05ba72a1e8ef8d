"""The export-gated sampler: no recording spans until something exports them."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.telemetry import ExportGatedSampler


@pytest.mark.parametrize(("exporting", "ratio", "recorded"), [
    (False, 1.0, False),  # nothing exports: spans cost nothing
    (True, 1.0, True),
    (True, 0.0, False),  # the configured ratio still applies once exporting
])
def test_spans_are_recorded_only_while_exporting(exporting: bool, ratio: float,
                                                 recorded: bool) -> None:
    sampler = ExportGatedSampler(ratio)
    sampler.exporting = exporting
    provider = TracerProvider(sampler=sampler)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span("child") as child:
            assert child.is_recording() is recorded
            # Dropped or not, the trace id travels (logs and propagation keep working).
            assert child.get_span_context().trace_id == parent.get_span_context().trace_id
            assert child.get_span_context().trace_id != 0
    assert len(exporter.get_finished_spans()) == (2 if recorded else 0)


def test_a_dropped_parent_is_honoured_downstream() -> None:
    """A root dropped for lack of an exporter propagates its decision (parent-based)."""
    upstream = TracerProvider(sampler=ExportGatedSampler(1.0)).get_tracer("up")
    downstream_sampler = ExportGatedSampler(1.0)
    downstream_sampler.exporting = True
    downstream = TracerProvider(sampler=downstream_sampler).get_tracer("down")
    from opentelemetry import trace
    with upstream.start_as_current_span("root") as root:
        assert not root.is_recording()
        child = downstream.start_span("child", context=trace.set_span_in_context(root))
        assert not child.is_recording()
        child.end()
