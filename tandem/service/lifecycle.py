"""One lifecycle for every service: start → canary → SERVING → drain on SIGTERM → close.

A service is anything with the five steps of ``Service``; ``run_service`` drives them in
order and ``service_main`` is a service process's whole entry point (settings, logs,
telemetry, metrics endpoint, uvloop, signals). ``Periodic`` is the background loop that
services use for heartbeats, refreshes and maintenance.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import uvloop

from tandem.restart_policy import jittered_backoff

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT")


class State(enum.StrEnum):
    """Where a service is in its life (DESIGN.md, "The fleet")."""

    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Service(Protocol):
    """The steps of a service's life, in the order ``run_service`` calls them."""

    name: str

    async def start(self) -> None:
        """Binds its servers and connects to its peers; health stays NOT_SERVING."""

    async def canary(self) -> None:
        """Sends one real request through the service; raises while it cannot serve."""

    async def serve(self) -> None:
        """Opens for traffic: health SERVING, registration in discovery."""

    async def drain(self) -> None:
        """Takes no new work and lets running work finish within the drain grace."""

    async def close(self) -> None:
        """Releases everything it holds (also after a failed start)."""


class Server(Protocol):
    """A server a service runs beside its others (gRPC, the token stream): the service calls
    these from its own steps."""

    async def start(self) -> object:
        """Listens."""

    async def drain(self) -> None:
        """Refuses new calls and lets running ones finish within its drain grace."""

    async def close(self) -> None:
        """Ends every call at once and stops listening."""


async def run_service(service: Service, stop: asyncio.Event,
                      canary_retry_s: float | None = None) -> None:
    """Runs ``service`` until ``stop`` is set, then drains and closes it. A failing canary ends
    the service, or, with ``canary_retry_s``, is tried again at that interval (a router
    whose workers are still starting) until it passes or ``stop`` is set."""
    state = State.STARTING
    log.info("service %s", state, extra={"service": service.name})
    try:
        await service.start()
        if not await _pass_canary(service, stop, canary_retry_s):
            return
        await service.serve()
        state = State.SERVING
        log.info("service %s", state, extra={"service": service.name})
        await stop.wait()
        state = State.DRAINING
        log.info("service %s", state, extra={"service": service.name})
        await service.drain()
    finally:
        await service.close()
        log.info("service %s", State.STOPPED, extra={"service": service.name,
                                                     "after": str(state)})


async def _pass_canary(service: Service, stop: asyncio.Event,
                       retry_s: float | None) -> bool:
    """True once the canary passed; False when ``stop`` came first."""
    while not stop.is_set():
        try:
            await service.canary()
            return True
        except Exception as error:
            if retry_s is None:
                raise
            log.info("%s not ready yet", service.name, extra={"reason": str(error)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), retry_s)
    return False


class Services:
    """Several services run as one (simulated workers sharing a process): each step runs on
    all of them at once."""

    def __init__(self, name: str, services: Sequence[Service]) -> None:
        self.name = name
        self.services = list(services)

    async def _each(self, step: Callable[[Service], Coroutine[Any, Any, None]]) -> None:
        async with asyncio.TaskGroup() as group:
            for service in self.services:
                group.create_task(step(service))

    async def start(self) -> None:
        await self._each(lambda service: service.start())

    async def canary(self) -> None:
        await self._each(lambda service: service.canary())

    async def serve(self) -> None:
        await self._each(lambda service: service.serve())

    async def drain(self) -> None:
        await self._each(lambda service: service.drain())

    async def close(self) -> None:
        results = await asyncio.gather(*(service.close() for service in self.services),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("closing %s failed", self.name, exc_info=result)


class Periodic:
    """Runs ``step`` every ``interval_s`` until closed; after a failure (Redis away, a peer
    down) tries again sooner, with jittered exponential backoff from ``interval_s / 10`` up to
    ``interval_s``, and logs the outage once when it starts and once when it ends.

    Closing sets a flag as well as cancelling: a cancellation that lands inside a Redis
    command can surface as an ordinary exception (redis-py), which this loop would log and
    survive; the flag ends it at its next turn anyway."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[object]],
                 jitter: Callable[[], float] = random.random) -> None:
        self.name = name
        self.interval_s = interval_s
        self.step = step
        self.jitter = jitter
        self.failures = 0
        """Failures in a row so far (0: the last step succeeded)."""
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    def pause(self) -> float:
        """Seconds until the next step: the interval, or the backoff after failures."""
        if not self.failures:
            return self.interval_s
        return jittered_backoff(self.failures, self.interval_s / 10, self.interval_s,
                                self.jitter())

    async def _loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.pause())
            try:
                await self.step()
            except Exception:
                if self._closing:
                    break
                self.failures += 1
                if self.failures == 1:
                    log.warning("%s failed; retrying with backoff", self.name, exc_info=True)
                continue
            if self.failures:
                log.info("%s works again", self.name, extra={"failures": self.failures})
                self.failures = 0

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Runs ``main(stop)`` on uvloop; SIGTERM and SIGINT set ``stop`` so it can drain."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(wrapper())


def service_main(name: str, settings_type: type[SettingsT], argv: Sequence[str],
                 build: Callable[[SettingsT], Service], *, env_prefix: str | None = None,
                 log_name: str | None = None,
                 canary_retry_s: Callable[[SettingsT], float | None] = lambda _: None) -> None:
    """A service process: settings from flags and environment (``TANDEM_<NAME>_<FLAG>``),
    then ``serve_process``."""
    from tandem.service.settings import load_settings

    settings = load_settings(settings_type, env_prefix or f"tandem_{name}", argv)
    serve_process(name, settings, build, log_name=log_name,
                  canary_retry_s=canary_retry_s(settings))


def serve_process(name: str, settings: SettingsT, build: Callable[[SettingsT], Service], *,
                  log_name: str | None = None, canary_retry_s: float | None = None) -> None:
    """The rest of a service process once its settings are loaded: JSON logs (tagged
    ``log_name``, default ``name``), telemetry (service ``tandem-<name>``), the /metrics
    endpoint when a port is set, and ``run_service`` on the service ``build`` makes, until
    SIGTERM. The settings carry the shared groups ``server`` (``ServerSettings``) and
    ``telemetry`` (``TelemetrySettings``)."""
    from tandem.logs import setup_logging
    from tandem.metrics_http import serve_metrics
    from tandem.telemetry import setup_telemetry

    server: Any = getattr(settings, "server")  # noqa: B009 (any settings with the groups)
    telemetry: Any = getattr(settings, "telemetry")  # noqa: B009
    setup_logging(log_name or name, telemetry.log_level)
    setup_telemetry(f"tandem-{name}", telemetry)

    async def main(stop: asyncio.Event) -> None:
        if telemetry.metrics_port is not None:
            serve_metrics(server.host, telemetry.metrics_port)
        await run_service(build(settings), stop, canary_retry_s)

    run(main)
