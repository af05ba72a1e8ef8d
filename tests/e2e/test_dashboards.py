"""Every metric a Grafana dashboard queries is exported by the running system: the test sends a
few requests (so histograms and counters have samples; one prompt long enough to be prefilled
by the prefill worker, so the disaggregation stages have theirs), scrapes every /metrics
endpoint of the system and checks each metric name that each dashboard's PromQL names."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.unit.test_dashboards import dashboard_expressions, dashboards, promql_metric_names

pytestmark = pytest.mark.e2e


def exported_sample_names(urls: list[str]) -> set[str]:
    names: set[str] = set()
    for url in urls:
        reply = httpx.get(url, timeout=30)
        reply.raise_for_status()
        for line in reply.text.splitlines():
            if line and not line.startswith("#"):
                names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@pytest.fixture(scope="module")
def exported(running_system: Any) -> set[str]:
    base = running_system.router_http_url.rstrip("/")
    model = httpx.get(f"{base}/v1/models", timeout=60).json()["data"][0]["id"]
    for stream in (False, True, False):
        body = {"model": model, "max_tokens": 8, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": "Say hello to the dashboards."}]}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body,
                          timeout=300) as reply:
            reply.raise_for_status()
            reply.read()
    long_prompt = {"model": model, "max_tokens": 2, "temperature": 0, "user": "dashboards",
                   "prompt": "the quick brown fox jumps over the lazy dog " * 80}  # ~720 tokens
    reply = httpx.post(f"{base}/v1/completions", json=long_prompt, timeout=600)
    reply.raise_for_status()
    urls = list(running_system.metrics_urls)
    assert urls, "the running system lists no /metrics endpoint"
    return exported_sample_names(urls)


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_every_dashboard_metric_is_exported(path: Any, exported: set[str]) -> None:
    missing: dict[str, list[str]] = {}
    for expr in dashboard_expressions(json.loads(path.read_text())):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr}"
        for name in sorted(names - exported):
            missing.setdefault(name, []).append(expr)
    assert not missing, (
        f"{path.name} queries metrics the running system does not export: {sorted(missing)}"
    )
