"""The whole system as separate processes with the real engine (vLLM CPU build), started once
per test session through the same launcher as ``make run``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.redis_local import free_port
from tests.otlp_sink import BATCH_DELAY_ENV, OtlpSink

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"


@dataclasses.dataclass(frozen=True)
class RunningSystem:
    router_http_url: str
    router_grpc_address: str
    redis_url: str
    metrics_urls: list[str]
    kvstore_address: str
    namespace: str
    run_dir: Path

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
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.launch", "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--run-dir", str(run_dir), "--engine", "vllm",
         "--namespace", f"e2e-{os.getpid()}", "--otlp-endpoint", otlp_sink.endpoint],
        cwd=ROOT, env={**os.environ, **BATCH_DELAY_ENV, "PYTHONPATH": str(ROOT)},
        start_new_session=True)
    state = run_dir / "system.json"
    deadline = time.monotonic() + 400
    try:
        while not state.exists():
            if process.poll() is not None:
                pytest.fail(f"the launcher exited with {process.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("the system did not become ready in 400 s")
            time.sleep(0.5)
        info = json.loads(state.read_text())
        yield RunningSystem(
            router_http_url=info["router_http_url"],
            router_grpc_address=info["router_grpc_address"],
            redis_url=info["redis_url"], metrics_urls=info["metrics_urls"],
            kvstore_address=info["kvstore_address"], namespace=info["namespace"],
            run_dir=run_dir)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
