"""Starting a KV store as a child process (the local launcher, the tests, the benchmark)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from tandem.redis_local import free_port

ROOT = Path(__file__).resolve().parents[2]


class StoreProcess:
    """``python -m services.kvstore`` with the given flags, on a free loopback port."""

    def __init__(self, redis_url: str, arena: str, nvme: str, *extra: str,
                 namespace: str = "tandem", port: int | None = None) -> None:
        self.redis_url, self.arena, self.nvme, self.namespace = redis_url, arena, nvme, namespace
        self.extra = list(extra)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> StoreProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.kvstore", "--port", str(self.port),
             "--redis-url", self.redis_url, "--namespace", self.namespace,
             "--cxl-path", self.arena, "--nvme-path", self.nvme, "--log-level", "warning",
             *self.extra], env=env, cwd=str(ROOT))
        self.wait_serving(timeout_s)
        return self

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"kvstore exited with {self.process.returncode}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError("kvstore did not report SERVING in time")

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
