"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.redis_local import PrivateRedis
from tandem.telemetry import install_span_exporter, setup_telemetry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private, empty Redis for the test session (never the machine's shared one)."""
    server = PrivateRedis()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Every span this process records from now on (telemetry set up as in a service)."""
    setup_telemetry("tandem-test")
    exporter = InMemorySpanExporter()
    install_span_exporter(exporter)
    return exporter
