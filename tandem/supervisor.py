"""The local launcher's supervisor: restarts the services of a ``LocalSystem`` (and its private
Redis) that die, by a ``RestartPolicy`` (backoff, and a limit of deaths within a window past
which it gives a service up); a service that exits cleanly (drained) is not restarted."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tandem.restart_policy import RestartPolicy, decide
from tandem.service.spawn import ServiceProcess

if TYPE_CHECKING:
    from tandem.launch import LocalSystem


def exit_status(code: int | None) -> str:
    """A child's exit status in words."""
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


@dataclasses.dataclass
class _Watch:
    """What the supervisor knows of one service."""

    deaths: list[float] = dataclasses.field(default_factory=list)
    restart_at: float | None = None
    """When a restart is due (None: running, or given up)."""
    given_up: bool = False
    finished: bool = False
    """It exited cleanly (exit code 0: drained, e.g. by WorkerService.Drain): not restarted."""


class Supervisor:
    """Restarts the services of a ``LocalSystem`` (and its private Redis) that die, by a
    ``RestartPolicy``; reports each death on stderr with its exit status and last log lines."""

    REDIS = "redis"

    def __init__(self, system: LocalSystem, policy: RestartPolicy,
                 clock: Callable[[], float] = time.monotonic, log_lines: int = 10) -> None:
        self.system = system
        self.policy = policy
        self.clock = clock
        self.log_lines = log_lines
        self.watches: dict[str, _Watch] = {}
        self._changed = False

    def forget(self, name: str) -> None:
        """Stops watching ``name`` (a drained worker the launcher removed)."""
        self.watches.pop(name, None)

    @property
    def given_up(self) -> list[str]:
        return sorted(name for name, watch in self.watches.items() if watch.given_up)

    @property
    def ended(self) -> list[str]:
        """Services that will not run again: given up, or finished cleanly."""
        return sorted(name for name, watch in self.watches.items()
                      if watch.given_up or watch.finished)

    def check(self) -> None:
        """One round: notes the services newly found dead, restarts those whose backoff is
        over."""
        now = self.clock()
        self._changed = False
        for service in self.system.services:
            if not service.running and self._due(
                    service.name, now, service.returncode, service.log_tail(self.log_lines)):
                self._restart_service(service)
        redis = self.system.redis
        if redis is not None and not redis.running and self._due(
                self.REDIS, now, redis.process.poll(), ""):
            redis.restart()
            self.system.say(f"redis restarted on {redis.url} (empty)")
        if self._changed:  # system.json lists the pids running now
            self.system.write_description()

    def _due(self, name: str, now: float, code: int | None, tail: str) -> bool:
        """Whether the dead service ``name`` is to be restarted now."""
        watch = self.watches.setdefault(name, _Watch())
        if watch.given_up or watch.finished:
            return False
        if watch.restart_at is None:  # an exit not seen before
            self._changed = True
            if code == 0:
                watch.finished = True
                self.system.say(f"{name} exited cleanly (drained); not restarted")
                return False
            watch.deaths.append(now)
            decision = decide(self.policy, watch.deaths, now)
            lines = f"; last log lines:\n{tail}" if tail else ""
            if decision.action == "give_up":
                watch.given_up = True
                self.system.say(
                    f"{name} exited with {exit_status(code)}: it died {decision.recent_deaths} "
                    f"times within {self.policy.window_s:g} s; GIVING UP on {name} (not "
                    f"restarted again); the rest of the system stays up{lines}")
                return False
            watch.restart_at = now + decision.delay_s
            self.system.say(
                f"{name} exited with {exit_status(code)}; restarting it in "
                f"{decision.delay_s:.1f} s (death {decision.recent_deaths} within "
                f"{self.policy.window_s:g} s, limit {self.policy.max_restarts}){lines}")
        if now < watch.restart_at:
            return False
        watch.restart_at = None
        self._changed = True
        return True

    def _restart_service(self, service: ServiceProcess) -> None:
        """The same command line again (same worker id, core and ports); whatever the dead
        process left in its session is killed first, and its log kept as <name>.log.1."""
        old_pid = service.pid
        service.wait_stopped(time.monotonic())  # reaped already: closes its log
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(old_pid, signal.SIGKILL)
        if service.log_path is not None and service.log_path.exists():
            service.log_path.replace(service.log_path.with_suffix(".log.1"))
        service.start()
        self.system.say(f"{service.name} restarted (pid {service.pid})")
