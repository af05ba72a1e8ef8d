"""The whole system as separate processes with the real engine (vLLM CPU build), started once
per test session through the same launcher as ``make run``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.model import default_model_dir
from tandem.redis_local import free_port
from tandem.service.spawn import ServiceExited, ServiceProcess
from tests.otlp_sink import BATCH_DELAY_ENV, OtlpSink

MODEL = "SmolLM2-135M-Instruct"


def system_dtype() -> str:
    """The dtype the system's vLLM workers run on this machine (the launcher's default,
    ``--dtype auto``, resolved as every worker resolves it)."""
    from tandem.engines.vllm_dtype import host_dtype

    return host_dtype("auto", default_model_dir())


@dataclasses.dataclass(frozen=True)
class RunningSystem:
    router_http_url: str
    router_grpc_address: str
    redis_url: str
    metrics_urls: list[str]
    kvstore_address: str
    namespace: str
    run_dir: Path
    planner_address: str | None = None

    @property
    def openai_base_url(self) -> str:
        return f"{self.router_http_url}/v1"


@pytest.fixture(scope="session")
def otlp_sink() -> Iterator[OtlpSink]:
    """Receives the traces of every service of the running system."""
    with OtlpSink() as sink:
        yield sink


@pytest.fixture(scope="session")
def running_system(tmp_path_factory: pytest.TempPathFactory,
                   otlp_sink: OtlpSink) -> Iterator[RunningSystem]:
    run_dir = tmp_path_factory.mktemp("system")
    http_port, grpc_port = free_port(), free_port()
    launcher = ServiceProcess(
        "the launcher", "tandem.launch",
        ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--run-dir", str(run_dir),
         "--engine", "vllm", "--namespace", f"e2e-{os.getpid()}",
         # the planner runs (its dashboard's metrics exist) but keeps the pools as they are
         "--planner", "true", "--planner-port", str(free_port()), "--planner-flags",
         "--interval-s 1 --prefill-min 1 --prefill-max 1 --decode-min 1 --decode-max 1",
         "--otlp-endpoint", otlp_sink.endpoint], env=BATCH_DELAY_ENV)
    state = run_dir / "system.json"
    try:
        launcher.start().wait_ready(state.exists, timeout_s=400)
        info = json.loads(state.read_text())
        yield RunningSystem(
            router_http_url=info["router_http_url"],
            router_grpc_address=info["router_grpc_address"],
            redis_url=info["redis_url"], metrics_urls=info["metrics_urls"],
            kvstore_address=info["kvstore_address"], namespace=info["namespace"],
            run_dir=run_dir, planner_address=info["planner_address"])
    except (ServiceExited, TimeoutError) as error:
        pytest.fail(f"the system did not start: {error}")
    finally:
        launcher.stop(timeout_s=60)
