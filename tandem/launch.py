"""The local system as processes: ``python -m tandem.launch --help`` (what ``make run`` runs).

Starts a private Redis when none is configured, then the KV store, the decode and prefill
workers and the router, waits until every worker is registered and the router answers, prints
where to reach it, and stops everything (in reverse order, gracefully) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from annotated_types import Ge, Gt

from services.router.core.disaggregation import DisaggregationMode
from tandem.model import ModelSettings, is_prepared, prepare
from tandem.redis_local import PrivateRedis, free_port
from tandem.restart_policy import RestartPolicy, decide
from tandem.service.settings import Settings, flags_of, load_settings, shared
from tandem.service.spawn import ServiceProcess, grpc_serving, http_ok, stop_all, wait_ready
from tandem.worker.settings import DtypeChoice, EngineName

SUPERVISE_INTERVAL_S = 0.2
"""How often the launcher looks for dead services."""


@dataclasses.dataclass(frozen=True)
class LaunchSettings(Settings):
    """The local tandem system: Redis, KV store, decode and prefill workers, router.

    Every flag can also be set as TANDEM_<FLAG> in the environment."""

    host: str = "127.0.0.1"
    """Interface every service binds."""
    http_port: int = 8000
    """Router HTTP port (the OpenAI API)."""
    grpc_port: int = 50050
    """Router gRPC port (RouterService)."""
    redis_url: str | None = None
    """Redis to use; unset starts a private redis-server for this system."""
    engine: EngineName = "vllm"
    """Engine of the workers: "vllm" (real) or "mock" (simulated)."""
    decode_workers: Annotated[int, Ge(1)] = 1
    """Number of decode workers."""
    prefill_workers: Annotated[int, Ge(0)] = 1
    """Number of prefill workers (0: every decode worker prefills its own prompts). They need
    the KV store, through which their KV cache reaches the decode workers."""
    disaggregation: DisaggregationMode = "auto"
    """Router: remote prefill "auto" (long uncached prompts), "always" or "never"."""
    kvstore: bool = True
    """Start the KV store (shared-memory arena + disk tier) with the system."""
    kvstore_cxl_mib: Annotated[int, Ge(1)] = 256
    """Capacity of the KV store's shared-memory arena (/dev/shm), MiB."""
    kvstore_nvme_mib: Annotated[int, Ge(1)] = 2048
    """Capacity of the KV store's disk tier (under run_dir), MiB."""
    model: ModelSettings = shared(ModelSettings)
    """The model every worker serves and the router tokenizes for (prepared on first use)."""
    kv_cache_gib: Annotated[int, Ge(1)] = 1
    """KV cache per vLLM worker, GiB."""
    dtype: DtypeChoice = "bfloat16"
    """dtype of every vLLM worker ("auto": bfloat16 where the CPU computes it natively, else
    float32, several times faster on an AVX2-only CPU; see the workers' --dtype)."""
    pin_cores: bool = True
    """Bind each vLLM worker to its own core (worker i → core i mod cores)."""
    run_dir: str = "run"
    """Where service logs (<service>.log) and system.json (addresses) are written."""
    startup_timeout_s: Annotated[float, Ge(1)] = 300.0
    """How long the system may take to become ready."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector endpoint for every service's traces."""
    namespace: str = "tandem"
    """Prefix of every Redis key."""
    restart_backoff_s: Annotated[float, Ge(0)] = 0.5
    """Pause before restarting a service that died; doubled for each further death within
    --restart-window-s (up to --restart-max-backoff-s)."""
    restart_max_backoff_s: Annotated[float, Ge(0)] = 10.0
    """Longest pause before restarting a service that died."""
    max_restarts: Annotated[int, Ge(0)] = 5
    """Restarts of one service allowed within --restart-window-s; one more death gives the
    service up (the rest of the system stays up). 0: never restart."""
    restart_window_s: Annotated[float, Gt(0)] = 60.0
    """Window in which a service's deaths are counted."""

    def validate(self) -> None:
        if self.prefill_workers and not self.kvstore:
            raise ValueError("prefill workers need the KV store (--kvstore true)")
        if self.restart_max_backoff_s < self.restart_backoff_s:
            raise ValueError("--restart-max-backoff-s must be >= --restart-backoff-s")

    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy(self.restart_backoff_s, self.restart_max_backoff_s,
                             self.max_restarts, self.restart_window_s)


class LocalSystem:
    """Starts and stops the processes of one local system."""

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.services: list[ServiceProcess] = []
        self.redis: PrivateRedis | None = None
        self.redis_url = settings.redis_url or ""
        self.metrics_urls: list[str] = []
        self.kvstore_address = ""
        self.cleanup_paths: list[Path] = []

    def say(self, message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, module: str, args: list[str]) -> None:
        service = ServiceProcess(name, module, args, log_path=self.run_dir / f"{name}.log")
        self.services.append(service.start())

    def start(self) -> None:
        s = self.settings
        if s.model.model_dir is None and not is_prepared(Path(s.model.resolved_dir())):
            prepare()
        if not s.redis_url:
            self.redis = PrivateRedis(self.run_dir / "redis")
            self.redis_url = self.redis.url
            self.say(f"private redis on {self.redis_url}")
        model = dataclasses.replace(s.model, model_dir=s.model.resolved_dir())
        common = ["--redis-url", self.redis_url, "--namespace", s.namespace,
                  *flags_of(model, changed_only=False)]
        if s.otlp_endpoint:
            common += ["--otlp-endpoint", s.otlp_endpoint]
        if s.kvstore:
            self._start_kvstore()
            self._wait_kvstore()
        workers = [("decode", index) for index in range(s.decode_workers)]
        workers += [("prefill", index) for index in range(s.prefill_workers)]
        for position, (role, index) in enumerate(workers):
            self._start_worker(role, index, position, common)
        self._spawn("router", "services.router", [
            *common, "--host", s.host, "--http-port", str(s.http_port),
            "--grpc-port", str(s.grpc_port), "--disaggregation", s.disaggregation])
        self.metrics_urls.append(f"http://{s.host}:{s.http_port}/metrics")
        self.say(f"router starting (log {self.run_dir}/router.log)")
        self._wait_ready()
        self.write_description()

    def _start_worker(self, role: str, index: int, position: int, common: list[str]) -> None:
        """One engine worker; vLLM workers are pinned one per core, in start order."""
        s = self.settings
        name = f"{role}-{index}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        args = [*common, "--host", s.host, "--port", "0", "--engine", s.engine,
                "--worker-id", name, "--kv-cache-gib", str(s.kv_cache_gib), "--dtype", s.dtype,
                "--metrics-port", str(metrics_port)]
        if self.kvstore_address:
            args += ["--kvstore-address", self.kvstore_address]
        if s.engine == "vllm" and s.pin_cores:
            args += ["--cpu-cores", str(position % (os.cpu_count() or 1))]
        self._spawn(name, f"services.{role}", args)
        self.say(f"{name} starting ({s.engine} engine; log {self.run_dir}/{name}.log)")

    def _start_kvstore(self) -> None:
        from services.kvstore.settings import KVStoreSettings
        from tandem.service.groups import ControlPlaneSettings, ServerSettings
        from tandem.telemetry import TelemetrySettings

        s = self.settings
        self.kvstore_address = f"{s.host}:{free_port()}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        arena = f"/dev/shm/tandem-{s.namespace}-{os.getpid()}-arena"
        store = KVStoreSettings(
            control=ControlPlaneSettings(self.redis_url, s.namespace),
            server=ServerSettings(host=s.host), port=int(self.kvstore_address.rsplit(":", 1)[1]),
            cxl_path=arena, cxl_capacity_bytes=s.kvstore_cxl_mib << 20,
            nvme_path=str(self.run_dir.resolve() / "kvstore-nvme"),
            nvme_capacity_bytes=s.kvstore_nvme_mib << 20,
            telemetry=TelemetrySettings(otlp_endpoint=s.otlp_endpoint, metrics_port=metrics_port))
        self._spawn("kvstore", "services.kvstore", flags_of(store))
        self.cleanup_paths.append(Path(arena))
        self.say(f"kvstore starting on {self.kvstore_address} (arena {arena}, "
                 f"{s.kvstore_cxl_mib} MiB; log {self.run_dir}/kvstore.log)")

    def _wait_kvstore(self) -> None:
        """Workers connect to the store when they start: it must serve first."""
        wait_ready([self.services[-1]], self._kvstore_ready, self.settings.startup_timeout_s,
                   "kvstore not serving", poll_s=0.1)
        self.say(f"kvstore serving on {self.kvstore_address}")

    def describe(self) -> dict[str, object]:
        s = self.settings
        return {"router_http_url": f"http://{s.host}:{s.http_port}",
                "router_grpc_address": f"{s.host}:{s.grpc_port}",
                "redis_url": self.redis_url, "metrics_urls": self.metrics_urls,
                "kvstore_address": self.kvstore_address, "namespace": s.namespace,
                "pids": {service.name: service.pid for service in self.services
                         if service.running},
                "redis_pid": self.redis.process.pid if self.redis is not None else None}

    def write_description(self) -> None:
        (self.run_dir / "system.json").write_text(json.dumps(self.describe(), indent=2))

    def _wait_ready(self) -> None:
        url = f"http://{self.settings.host}:{self.settings.http_port}/health"
        started = time.monotonic()
        wait_ready(
            self.services,
            lambda: http_ok(url) and self._kvstore_ready() and self._workers_registered(),
            self.settings.startup_timeout_s, "not ready", poll_s=0.5,
            progress=lambda elapsed: self.say(
                f"waiting for the engine(s) to load ({elapsed:.0f} s)"))
        self.say(f"ready in {time.monotonic() - started:.0f} s")

    def _workers_registered(self) -> bool:
        """Every worker has passed its canary and holds a discovery lease."""
        import redis

        from tandem.discovery import worker_key

        names = [service.name for service in self.services
                 if service.name.startswith(("decode-", "prefill-"))]
        with redis.Redis.from_url(self.redis_url) as client:
            keys = [worker_key(self.settings.namespace, name) for name in names]
            return bool(client.exists(*keys) == len(keys)) if keys else True

    def _kvstore_ready(self) -> bool:
        return not self.kvstore_address or grpc_serving(self.kvstore_address)

    def stop(self) -> None:
        stop_all(reversed(self.services))
        self.services.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for path in self.cleanup_paths:
            path.unlink(missing_ok=True)


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


def main(argv: list[str]) -> None:
    settings = load_settings(LaunchSettings, "tandem", argv, description=__doc__)
    system = LocalSystem(settings)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        system.start()
        info = system.describe()
        print(f"tandem is up: OpenAI API at {info['router_http_url']}/v1 "
              f"(gRPC RouterService at {info['router_grpc_address']}). Ctrl-C stops it.",
              flush=True)
        supervisor = Supervisor(system, settings.restart_policy())
        while len(supervisor.ended) < len(system.services):
            supervisor.check()
            time.sleep(SUPERVISE_INTERVAL_S)
        print("no service is left running; stopping the system", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        print("==> stopping", file=sys.stderr, flush=True)
        system.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
