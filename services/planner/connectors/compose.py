"""The compose connector: scales the worker services of a docker compose project with the
compose CLI (``docker-compose up -d --no-deps --no-recreate --scale <service>=N <service>``)
and reads each pool from the project's containers (``docker ps`` with the compose labels and
each container's health). Scale-down is compose's: the surplus containers get SIGTERM, on
which a worker drains (``stop_grace_period`` in compose.yaml covers its drain grace)."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping, Sequence

from services.planner.connectors.base import Fleet, Pool, PoolState
from services.planner.settings import ComposeSettings


class ComposeError(RuntimeError):
    """The compose CLI failed."""


async def run_cli(argv: Sequence[str], timeout_s: float) -> str:
    """Runs ``argv``; its stdout, or ``ComposeError`` with its stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ComposeError(f"{shlex.join(argv)} took over {timeout_s:g} s") from None
    if process.returncode:
        raise ComposeError(f"{shlex.join(argv)} exited with {process.returncode}: "
                           f"{err.decode(errors='replace').strip()[-500:]}")
    return out.decode()


def container_state(status: str) -> str:
    """A container's pool state from ``docker ps``'s Status column: ``Up 3 minutes
    (healthy)`` serves, ``(health: starting)`` starts, ``(unhealthy)`` is a worker that
    stopped serving (draining); without a healthcheck a running container serves."""
    if "(health: starting)" in status:
        return "starting"
    if "(unhealthy)" in status:
        return "draining"
    return "serving"


class ComposeConnector:
    """Scales compose services through the CLI."""

    name = "compose"

    def __init__(self, settings: ComposeSettings) -> None:
        self.settings = settings
        self.services: dict[Pool, str] = {"prefill": settings.prefill_service,
                                          "decode": settings.decode_service}

    def _compose(self, *args: str) -> list[str]:
        s = self.settings
        files = [arg for path in s.files for arg in ("-f", path)]
        return [*shlex.split(s.command), "-p", s.project, *files, *args]

    async def start(self) -> None:
        await run_cli(self._compose("config", "--services"), self.settings.timeout_s)

    async def apply(self, desired: Mapping[Pool, int], sequence: int) -> None:
        scales = [arg for pool, count in sorted(desired.items())
                  for arg in ("--scale", f"{self.services[pool]}={count}")]
        names = [self.services[pool] for pool in sorted(desired)]
        await run_cli(self._compose(
            "up", "-d", "--no-deps", "--no-recreate", "--timeout",
            str(int(self.settings.stop_timeout_s)), *scales, *names), self.settings.timeout_s)

    async def observe(self) -> Fleet:
        fleet: dict[Pool, PoolState] = {}
        for pool, service in self.services.items():
            out = await run_cli([
                *shlex.split(self.settings.docker), "ps",
                "--filter", f"label=com.docker.compose.project={self.settings.project}",
                "--filter", f"label=com.docker.compose.service={service}",
                "--format", "{{.Status}}"], self.settings.timeout_s)
            states = [container_state(line) for line in out.splitlines() if line.strip()]
            fleet[pool] = PoolState(ready=states.count("serving"),
                                    starting=states.count("starting"),
                                    draining=states.count("draining"))
        return fleet

    async def close(self) -> None:
        pass
