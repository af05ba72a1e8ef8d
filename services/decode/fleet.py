"""Many simulated decode workers in one process: ``python -m services.decode.fleet --help``.

To the rest of the system each one is a whole decode worker: its own mock engine, its own gRPC
server (DecodeService, WorkerService, health, reflection) on its own port, its own discovery
lease and heartbeat, its own KV event stream. Only the process is shared (the event loop and
the /metrics endpoint), so one machine stands in for a fleet in scale and load tests; every
response says ``mock-simulated`` in its fingerprint.

    python -m services.decode.fleet --num-workers 64 --mock-profile h100-llama3-70b \\
        --mock-speedup 10 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

from services.decode.api.decode_service import DECODE_SERVICE
from services.decode.app import ROLE, decode_servicer
from services.decode.settings import DecodeSettings
from tandem.config import load_settings
from tandem.logs import setup_logging
from tandem.metrics_http import serve_metrics
from tandem.runtime import run
from tandem.telemetry import TelemetrySettings, setup_telemetry
from tandem.worker.app import worker_runtime


@dataclasses.dataclass(frozen=True)
class FleetSettings(DecodeSettings):
    """Simulated decode workers (mock engine), many in one process.

    Every flag can also be set as TANDEM_DECODE_FLEET_<FLAG> in the environment."""

    num_workers: int = 8
    """Simulated decode workers this process hosts."""
    engine: str = "mock"
    """Engine adapter; only "mock" (a vLLM worker needs a process, cores and memory of its
    own)."""
    port: int = 0
    """gRPC port of the first worker; worker n listens on port + n (0: each picks a free
    one, and registers it)."""
    worker_id: str | None = None
    """Prefix of the worker ids: worker n is <prefix>-<n> (default:
    decode-<hostname>-<random>)."""

    def validate(self) -> None:
        super().validate()
        if self.engine != "mock":
            raise ValueError("--engine: a fleet simulates workers; only mock is supported")
        if self.num_workers < 1:
            raise ValueError("--num-workers must be at least 1")

    def for_worker(self, number: int, prefix: str) -> DecodeSettings:
        """The settings of simulated worker ``number``."""
        return dataclasses.replace(
            self, worker_id=f"{prefix}-{number}", port=self.port + number if self.port else 0)


async def serve_fleet(settings: FleetSettings, stop: asyncio.Event) -> None:
    """Runs ``settings.num_workers`` decode workers until ``stop``; then drains them all. One
    that fails to start stops the fleet."""
    prefix = settings.resolved_worker_id(ROLE)
    workers = [worker_runtime(ROLE, settings.for_worker(number, prefix),
                              DECODE_SERVICE, decode_servicer)
               for number in range(settings.num_workers)]
    async with asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(worker.serve(stop), name=f"worker {worker.worker_id}")


def main(argv: list[str]) -> None:
    settings = load_settings(FleetSettings, "tandem_decode_fleet", argv)
    setup_logging("decode-fleet", settings.log_level)
    setup_telemetry("tandem-decode", TelemetrySettings(otlp_endpoint=settings.otlp_endpoint))

    async def serve(stop: asyncio.Event) -> None:
        if settings.metrics_port is not None:
            serve_metrics(settings.host, settings.metrics_port)
        await serve_fleet(settings, stop)

    run(serve)


if __name__ == "__main__":
    main(sys.argv[1:])
