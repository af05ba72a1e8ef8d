"""Every metric a Grafana dashboard queries is exported by the running system: the test sends a
few requests (so histograms and counters have samples; one prompt long enough to be prefilled
by the prefill worker, so the disaggregation stages have theirs), scrapes every /metrics
endpoint of the system and checks each metric name that each dashboard's PromQL names; the
planner dashboard's figures are also checked against the live planner's own plan (GetPlan)."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tandem.v1 import planner_pb2, planner_pb2_grpc
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


def planner_samples(urls: list[str]) -> list[tuple[str, dict[str, str], float]]:
    """The ``tandem_planner_*`` samples of the endpoint that exports them (the planner's)."""
    for url in urls:
        text = httpx.get(url, timeout=30).text
        if "tandem_planner_" not in text:
            continue
        return [(sample.name, sample.labels, sample.value)
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name.startswith("tandem_planner_")]
    raise AssertionError("no endpoint of the running system exports tandem_planner_*")


def value(samples: list[tuple[str, dict[str, str], float]], name: str,
          **labels: str) -> float | None:
    """The sum of ``name``'s samples that carry ``labels`` (the exporter adds its own); None
    without any."""
    found = [v for n, have, v in samples
             if n == name and all(have.get(k) == want for k, want in labels.items())]
    return sum(found) if found else None


def test_the_planner_dashboard_shows_the_live_plan(running_system: Any,
                                                   exported: set[str]) -> None:
    """The planner dashboard's gauges say what the live planner decided: desired and ready
    workers per pool, targets, forecast, decisions, and an observed TTFT from a tick that saw
    the requests sent above, as its GetPlan reports them (1 s ticks; pools pinned at 1)."""
    assert running_system.planner_address, "the running system has no planner"
    urls = list(running_system.metrics_urls)
    deadline = time.monotonic() + 60
    while True:  # the same decision in both reads (a tick may fall between them)
        with grpc.insecure_channel(running_system.planner_address) as channel:
            stub = planner_pb2_grpc.PlannerServiceStub(channel)
            before = stub.GetPlan(planner_pb2.GetPlanRequest(), timeout=10).plan
            samples = planner_samples(urls)
            after = stub.GetPlan(planner_pb2.GetPlanRequest(), timeout=10).plan
        if before.sequence == after.sequence or time.monotonic() > deadline:
            break
    plan = after
    assert plan.sequence > 0, "no decision yet"
    assert {pool.pool for pool in plan.pools} == {"prefill", "decode"}
    for pool in plan.pools:
        desired = value(samples, "tandem_planner_desired_workers", tandem_pool=pool.pool)
        assert desired == pool.desired == 1, (pool.pool, desired, pool.desired)
        ready = value(samples, "tandem_planner_workers", tandem_pool=pool.pool,
                      tandem_state="ready")
        assert ready == pool.ready == 1, (pool.pool, ready, pool.ready)
    assert value(samples, "tandem_planner_target_ttft_seconds") == pytest.approx(
        plan.targets.ttft_ms / 1000)
    assert value(samples, "tandem_planner_target_itl_seconds") == pytest.approx(
        plan.targets.itl_ms / 1000)
    assert value(samples, "tandem_planner_forecast_rate_per_second") == pytest.approx(
        plan.forecast_rate)
    assert value(samples, "tandem_planner_decisions_total") == plan.sequence
    # the requests of the ``exported`` fixture were observed by a tick: an observed TTFT
    observed = value(samples, "tandem_planner_observed_ttft_seconds")
    assert observed is not None and observed > 0
