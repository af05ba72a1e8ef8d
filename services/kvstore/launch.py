"""A KV store as a child process on the kit's spawner (the tests and the benchmark): the
store's command line and its readiness, nothing else."""

from __future__ import annotations

from typing import Self

from services.kvstore.settings import KVStoreSettings
from tandem.redis_local import free_port
from tandem.service.groups import ControlPlaneSettings
from tandem.service.settings import flags_of
from tandem.service.spawn import ServiceProcess, grpc_serving
from tandem.telemetry import TelemetrySettings


class StoreProcess(ServiceProcess):
    """``python -m services.kvstore`` on a free loopback port with the given arena and block
    directory (and ``extra`` flags); ``start`` returns once the store reports SERVING, which
    it does after its canary put and got a block through every path."""

    def __init__(self, redis_url: str, arena: str, nvme: str, *extra: str,
                 namespace: str = "tandem", port: int | None = None) -> None:
        self.nvme = nvme
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        settings = KVStoreSettings(
            port=self.port, control=ControlPlaneSettings(redis_url, namespace), cxl_path=arena,
            nvme_path=nvme, telemetry=TelemetrySettings(log_level="warning"))
        super().__init__("kvstore", "services.kvstore", [*flags_of(settings), *extra])

    def start(self, timeout_s: float = 60.0) -> Self:
        super().start()
        return self.wait_ready(lambda: grpc_serving(self.address, timeout_s=0.5), timeout_s)
