"""The planner service's settings and contract pieces: the connector registry and its
``Literal`` stay equal, flags load, SetTargets' targets are applied or refused naming the field,
and the performance model follows the mock workers' flags."""

from __future__ import annotations

import typing

import pytest

from services.planner.api.grpc_api import retargeted
from services.planner.app import worker_profile
from services.planner.connectors import CONNECTORS
from services.planner.core.settings import PlannerSettings
from services.planner.settings import ConnectorName, PlannerServiceSettings
from tandem.errors import TandemError
from tandem.service.settings import load_settings
from tandem.v1 import planner_pb2
from tandem.worker.settings import MockWorkerSettings


def test_every_connector_is_registered_and_accepted() -> None:
    assert set(CONNECTORS) == set(typing.get_args(ConnectorName))


def test_flags() -> None:
    settings = load_settings(PlannerServiceSettings, "tandem_planner", [
        "--connector", "kubernetes", "--ttft-target-s", "0.3", "--percentile", "0.95",
        "--kubernetes-decode-deployment", "dec", "--mock-profile", "h100-llama3-70b",
        "--router-metrics-urls", "http://a/metrics,http://b/metrics"], environ={})
    assert settings.connector == "kubernetes"
    assert (settings.planning.ttft_target_s, settings.planning.percentile) == (0.3, 0.95)
    assert settings.kubernetes.decode_deployment == "dec"
    assert settings.router_metrics_urls == ("http://a/metrics", "http://b/metrics")
    with pytest.raises(SystemExit):
        load_settings(PlannerServiceSettings, "tandem_planner", ["--connector", "ssh"],
                      environ={})


@pytest.mark.parametrize(("targets", "expected"), [
    ({"ttft_ms": 250}, (0.25, 0.05, 0.9)),
    ({"itl_ms": 20, "percentile": 0.99}, (0.5, 0.02, 0.99)),
    ({}, (0.5, 0.05, 0.9)),
])
def test_set_targets(targets: dict[str, float], expected: tuple[float, float, float]) -> None:
    got = retargeted(PlannerSettings(), planner_pb2.ServiceLevelObjective(**targets))
    assert (got.ttft_target_s, got.itl_target_s, got.percentile) == pytest.approx(expected)


@pytest.mark.parametrize(("targets", "field"), [
    ({"ttft_ms": -1}, "targets.ttft_ms"),
    ({"itl_ms": float("nan")}, "targets.itl_ms"),
    ({"percentile": 1.0}, "targets.percentile"),
])
def test_set_targets_refuses_naming_the_field(targets: dict[str, float], field: str) -> None:
    with pytest.raises(TandemError) as refused:
        retargeted(PlannerSettings(), planner_pb2.ServiceLevelObjective(**targets))
    assert refused.value.param == field


def test_the_model_is_the_mock_workers_profile() -> None:
    fixed = worker_profile(MockWorkerSettings(decode_ms=8, prefill_ms_per_token=0.1))
    assert (fixed.decode_step_s, fixed.prefill_token_s) == pytest.approx((0.008, 0.0001))
    named = worker_profile(MockWorkerSettings(profile="cpu-smollm2-135m"))
    faster = worker_profile(MockWorkerSettings(profile="cpu-smollm2-135m", speedup=4))
    assert faster.step_overhead_s == pytest.approx(named.step_overhead_s / 4)
    assert faster.max_num_seqs == named.max_num_seqs
