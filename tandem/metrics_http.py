"""The Prometheus /metrics endpoint of services that have no HTTP server of their own."""

from __future__ import annotations

import prometheus_client


def serve_metrics(host: str, port: int) -> None:
    """Serves the process's metrics registry on ``http://host:port/metrics`` (a thread)."""
    prometheus_client.start_http_server(port, addr=host)
