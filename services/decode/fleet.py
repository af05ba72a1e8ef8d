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

import dataclasses
import sys
from typing import Annotated, Literal

from annotated_types import Ge

from services.decode.app import ROLE, decode_servicer
from services.decode.settings import DecodeSettings
from tandem.service.grpc import DECODE_SERVICE
from tandem.service.lifecycle import Services, service_main
from tandem.worker.app import worker_runtime


@dataclasses.dataclass(frozen=True)
class FleetSettings(DecodeSettings):
    """Simulated decode workers (mock engine), many in one process.

    Every flag can also be set as TANDEM_DECODE_FLEET_<FLAG> in the environment."""

    num_workers: Annotated[int, Ge(1)] = 8
    """Simulated decode workers this process hosts."""
    engine: Literal["mock"] = "mock"
    """Engine adapter; only "mock" (a vLLM worker needs a process, cores and memory of its
    own)."""
    port: Annotated[int, Ge(0)] = 0
    """gRPC port of the first worker; worker n listens on port + n (0: each picks a free
    one, and registers it)."""
    token_stream_port: Annotated[int, Ge(0)] = 0
    """Token-stream port of the first worker; worker n listens on it + n (0: each picks a free
    one)."""
    worker_id: str | None = None
    """Prefix of the worker ids: worker n is <prefix>-<n> (default:
    decode-<hostname>-<random>)."""

    def for_worker(self, number: int, prefix: str) -> DecodeSettings:
        """The settings of simulated worker ``number``."""
        return dataclasses.replace(
            self, worker_id=f"{prefix}-{number}", port=self.port + number if self.port else 0,
            token_stream_port=self.token_stream_port + number if self.token_stream_port else 0)


def fleet(settings: FleetSettings) -> Services:
    """``settings.num_workers`` decode workers run as one service: they start, pass their
    canaries, serve and drain together; one that fails to start stops the fleet."""
    prefix = settings.resolved_worker_id(ROLE)
    return Services("decode-fleet", [
        worker_runtime(ROLE, settings.for_worker(number, prefix), DECODE_SERVICE,
                       decode_servicer)
        for number in range(settings.num_workers)])


def main(argv: list[str]) -> None:
    service_main(ROLE, FleetSettings, argv, fleet, env_prefix="tandem_decode_fleet",
                 log_name="decode-fleet")


if __name__ == "__main__":
    main(sys.argv[1:])
