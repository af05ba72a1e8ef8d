"""Settings of the planner service: its server, where it observes the load, the connector it
acts through, and the planning rules of its core (``core.settings.PlannerSettings``: targets,
limits, scaling rules, predictor), flattened into its flags."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Interval

from services.planner.core.settings import PlannerSettings
from tandem.service.groups import ControlPlaneSettings, GrpcSettings, ServerSettings
from tandem.service.settings import Settings, shared
from tandem.telemetry import TelemetrySettings
from tandem.worker.settings import MockWorkerSettings

Port = Annotated[int, Interval(ge=0, le=65535)]

ConnectorName = Literal["local", "compose", "kubernetes", "virtual"]
"""The connectors of the registry (``connectors.CONNECTORS``; a test keeps them equal)."""


@dataclasses.dataclass(frozen=True)
class ComposeSettings(Settings):
    """The compose connector (``--compose-*``)."""

    project: str = "tandem"
    """Compose project name (``docker compose -p``)."""
    files: tuple[str, ...] = ("compose.yaml",)
    """Compose files (comma-separated), as ``-f`` takes them."""
    command: str = "docker-compose"
    """The compose CLI (``docker-compose`` 1.29, or ``docker compose``)."""
    docker: str = "docker"
    """The docker CLI (lists the project's containers and their health)."""
    prefill_service: str = "prefill"
    """Compose service of the prefill pool (``prefill-gpu`` for the GPU profile)."""
    decode_service: str = "decode"
    """Compose service of the decode pool (``decode-gpu`` for the GPU profile)."""
    stop_timeout_s: Annotated[float, Ge(0)] = 30.0
    """Seconds a surplus container has to drain after SIGTERM before compose kills it."""
    timeout_s: Annotated[float, Gt(0)] = 120.0
    """Longest run of one CLI command."""


@dataclasses.dataclass(frozen=True)
class KubernetesSettings(Settings):
    """The Kubernetes connector (``--kubernetes-*``)."""

    namespace: str = "tandem"
    """Namespace of the worker Deployments."""
    prefill_deployment: str = "prefill"
    """Deployment of the prefill pool."""
    decode_deployment: str = "decode"
    """Deployment of the decode pool."""
    api_url: str = ""
    """API server URL without credentials (``kubectl proxy``'s); empty: the kubeconfig below,
    or the pod's service account inside the cluster."""
    kubeconfig: str = ""
    """Kubeconfig file to use when no API URL is set (empty: in-cluster configuration)."""
    timeout_s: Annotated[float, Gt(0)] = 10.0
    """Longest API call."""


@dataclasses.dataclass(frozen=True)
class PlannerServiceSettings(Settings):
    """Planner: forecasts the load, sizes the prefill and decode pools to meet the TTFT and ITL
    targets, and acts through a connector.

    Every flag can also be set as TANDEM_PLANNER_<FLAG> in the environment."""

    port: Port = 50090
    """gRPC port of PlannerService (GetPlan, SetTargets, WatchPlans)."""
    connector: ConnectorName = "virtual"
    """How decisions are applied: "local" (the local launcher's workers), "compose" (docker
    compose services), "kubernetes" (Deployment replicas), "virtual" (published to Redis for an
    external actuator, which acknowledges what it applied)."""
    router_metrics_urls: tuple[str, ...] = ("http://127.0.0.1:8000/metrics",)
    """Prometheus endpoints of the routers (comma-separated): the load and latency observed.
    A host name is resolved at every scrape and each of its addresses scraped (a headless
    Kubernetes Service or a scaled compose service names every router)."""
    scrape_timeout_s: Annotated[float, Gt(0)] = 5.0
    """Longest scrape of one metrics endpoint, or GetLoad call to one worker."""
    measure_startup: bool = True
    """Measure how long a worker takes from being asked for to serving (at tick resolution)
    and plan with the longest of the latest --startup-samples as --startup-s (which is then
    only the value before the first measurement)."""
    startup_samples: Annotated[int, Ge(1)] = 8
    """Start-ups the measured lead time looks at."""
    decisions_stream_maxlen: Annotated[int, Ge(1)] = 10_000
    """Decisions kept in the Redis stream ``<ns>:planner:decisions`` (approximately)."""
    planning: PlannerSettings = shared(PlannerSettings)
    """Targets, limits, scaling rules and the load predictor (the core's settings)."""
    mock: MockWorkerSettings = dataclasses.field(default_factory=MockWorkerSettings)
    """The performance model of a worker: the mock engine's profile (``--mock-profile``, or
    the fixed times ``--mock-decode-ms``/``--mock-prefill-ms-per-token``), the same flags the
    mock workers take."""
    compose: ComposeSettings = dataclasses.field(default_factory=ComposeSettings)
    """The compose connector."""
    kubernetes: KubernetesSettings = dataclasses.field(default_factory=KubernetesSettings)
    """The Kubernetes connector."""
    control: ControlPlaneSettings = shared(ControlPlaneSettings)
    """Redis: discovery, the decision stream, the local and virtual connectors' hashes."""
    server: ServerSettings = shared(ServerSettings)
    """Interface the gRPC server binds, and the drain."""
    grpc: GrpcSettings = shared(GrpcSettings)
    """gRPC transport limits."""
    telemetry: TelemetrySettings = shared(TelemetrySettings)
    """Logs, traces, metrics."""
