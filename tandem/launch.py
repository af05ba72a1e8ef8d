"""The local system as processes: ``python -m tandem.launch --help`` (what ``make run`` runs).

Starts a private Redis when none is configured, then the KV store, the decode and prefill
workers and the router, waits until every worker is registered and the router answers, prints
where to reach it, and stops everything (in reverse order, gracefully) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

from annotated_types import Ge, Gt

from services.router.core.disaggregation import DisaggregationMode
from tandem.launch_kvstore import kvstore_settings, slot_bytes
from tandem.launch_scaling import WorkerScaler
from tandem.launch_security import LaunchSecurity
from tandem.model import ModelSettings, is_prepared, prepare
from tandem.redis_local import PrivateRedis, free_port
from tandem.restart_policy import RestartPolicy
from tandem.security.redact import redact_url
from tandem.service.settings import Settings, flags_of, load_settings, shared
from tandem.service.spawn import (
    ServiceProcess,
    grpc_serving,
    http_json,
    http_ok,
    stop_all,
    wait_ready,
)
from tandem.supervisor import Supervisor
from tandem.worker.settings import DtypeChoice, EngineName, MockWorkerSettings

SUPERVISE_INTERVAL_S = 0.2
"""How often the launcher looks for dead services."""
VLLM_CPU_PROFILE = "cpu-smollm2-135m"
"""The planner's performance model of vLLM workers when no --mock-profile is given: the mock
engine's profile fitted to vLLM's CPU build serving the default model."""


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
    decode_workers: Annotated[int, Ge(0)] = 1
    """Number of decode workers (0 only with --planner: the system starts empty and the planner's
    --scale-to-zero brings a worker up for the first request, see --no-worker-wait-s)."""
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
    dtype: DtypeChoice = "auto"
    """dtype of every vLLM worker ("auto": float32 on a CPU without native bfloat16, several
    times faster there; else the model's dtype; see the workers' --dtype)."""
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
    mock: MockWorkerSettings = dataclasses.field(default_factory=MockWorkerSettings)
    """The mock engine's knobs (--mock-profile, --mock-speedup, ...): every mock worker takes
    them, and the planner's performance model is the same."""
    planner: bool = False
    """Start the planner with the local connector: it sizes the prefill and decode pools
    (starting from --prefill-workers and --decode-workers) and the launcher starts and drains
    workers as it decides. With vLLM workers it may run as many workers as there are cores
    (its --budget); without the KV store it keeps no prefill worker."""
    planner_port: Annotated[int, Ge(0)] = 50090
    """Planner gRPC port (PlannerService: GetPlan, SetTargets, WatchPlans)."""
    no_worker_wait_s: Annotated[float, Ge(0)] = 0.0
    """Router: how long a request waits for a decode worker when none is up before it is
    refused with 503 (its --admission-no-worker-wait-s; 0: at once). With the planner's
    --scale-to-zero, above its --interval-s plus a worker's start-up time."""
    planner_flags: str = ""
    """Further flags of the planner (``python -m services.planner --help``), e.g.
    "--ttft-target-s 0.3 --interval-s 5 --decode-max 8"."""
    tls_dir: str | None = None
    """A directory of certificates (``make certs``: ``python -m tandem.security.devca``): every
    gRPC hop and the KV data plane over mutual TLS (each service with ``<service>.pem``), the
    router's OpenAI API over HTTPS, and the private Redis over TLS with a random password."""

    def validate(self) -> None:
        if self.prefill_workers and not self.kvstore:
            raise ValueError("prefill workers need the KV store (--kvstore true)")
        if not self.decode_workers and not self.planner:
            raise ValueError("--decode-workers 0 needs --planner true (with --scale-to-zero)")
        if self.restart_max_backoff_s < self.restart_backoff_s:
            raise ValueError("--restart-max-backoff-s must be >= --restart-backoff-s")

    def mock_flags(self) -> list[str]:
        """The --mock-* flags that differ from their defaults, as a worker takes them."""
        flags = flags_of(self.mock)
        return [f"--mock-{flag[2:]}" if index % 2 == 0 else flag
                for index, flag in enumerate(flags)]

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
        self.common: list[str] = []
        """Flags every worker and the router get (namespace, model, collector; the Redis URL
        goes in their environment)."""
        self.worker_metrics: dict[str, str] = {}
        """Each worker's /metrics URL, by name."""
        self.security = LaunchSecurity(settings.tls_dir)
        """Each service's TLS flags, the Redis password, the launcher's own probes' TLS."""

    def say(self, message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, module: str, args: list[str]) -> None:
        # the Redis URL (a password in it) in the environment, never on a command line
        service = ServiceProcess(name, module, [*args, *self.security.flags(module)],
                                 log_path=self.run_dir / f"{name}.log",
                                 env=self.security.env(module, self.redis_url))
        self.services.append(service.start())

    def start(self) -> None:
        s = self.settings
        if s.model.model_dir is None and not is_prepared(Path(s.model.resolved_dir())):
            prepare()
        if not s.redis_url:
            self.redis = PrivateRedis(self.run_dir / "redis", **self.security.private_redis())
            self.redis_url = self.redis.url
            self.say(f"private redis on {redact_url(self.redis_url)}")
        model = dataclasses.replace(s.model, model_dir=s.model.resolved_dir())
        common = ["--namespace", s.namespace,
                  *flags_of(model, changed_only=False)]
        if s.otlp_endpoint:
            common += ["--otlp-endpoint", s.otlp_endpoint]
        self.common = common
        if s.kvstore:
            self._start_kvstore(str(model.model_dir))
            self._wait_kvstore()
        workers = [("decode", index) for index in range(s.decode_workers)]
        workers += [("prefill", index) for index in range(s.prefill_workers)]
        for position, (role, index) in enumerate(workers):
            self._start_worker(role, index, position, common)
        self._spawn("router", "services.router", [
            *common, "--host", s.host, "--http-port", str(s.http_port),
            "--grpc-port", str(s.grpc_port), "--disaggregation", s.disaggregation,
            "--admission-no-worker-wait-s", str(s.no_worker_wait_s)])
        self.metrics_urls.append(f"{self.http_url}/metrics")
        self.say(f"router starting (log {self.run_dir}/router.log)")
        if s.planner:
            self._start_planner()
        self._wait_ready()
        self.write_description()

    def _start_planner(self) -> None:
        """The planner, driving this launcher through the local connector
        (``tandem.launch_scaling``)."""
        import shlex

        s = self.settings
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        self._spawn("planner", "services.planner", [
            "--namespace", s.namespace, "--host", s.host,
            "--port", str(s.planner_port), "--connector", "local",
            "--router-metrics-urls", f"{self.http_url}/metrics",
            "--metrics-port", str(metrics_port), *s.mock_flags(),
            *(["--mock-profile", VLLM_CPU_PROFILE]
              if s.engine == "vllm" and not s.mock.profile else []),
            # a vLLM worker takes a core: no more workers than cores (--budget in the flags wins)
            *(["--budget", str(max(2, os.cpu_count() or 1))] if s.engine == "vllm" else []),
            # prefill workers need the KV store: without it the prefill pool stays empty
            *([] if s.kvstore else ["--prefill-min", "0", "--prefill-max", "0"]),
            *(["--otlp-endpoint", s.otlp_endpoint] if s.otlp_endpoint else []),
            *shlex.split(s.planner_flags)])
        self.say(f"planner starting on {s.host}:{s.planner_port} "
                 f"(log {self.run_dir}/planner.log)")

    def add_worker(self, role: str, index: int) -> None:
        """One more worker of ``role`` (the planner asked for it)."""
        position = sum(1 for name in self.worker_metrics)
        self._start_worker(role, index, position, self.common)
        self.write_description()

    def remove(self, name: str) -> None:
        """Forgets the service ``name`` (a drained worker that left)."""
        self.services = [service for service in self.services if service.name != name]
        url = self.worker_metrics.pop(name, None)
        if url in self.metrics_urls:
            self.metrics_urls.remove(url)
        self.write_description()

    def _start_worker(self, role: str, index: int, position: int, common: list[str]) -> None:
        """One engine worker; vLLM workers are pinned one per core, in start order."""
        s = self.settings
        name = f"{role}-{index}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        self.worker_metrics[name] = self.metrics_urls[-1]
        args = [*common, "--host", s.host, "--port", "0", "--engine", s.engine,
                "--worker-id", name, "--kv-cache-gib", str(s.kv_cache_gib), "--dtype", s.dtype,
                "--metrics-port", str(metrics_port)]
        if self.kvstore_address:
            args += ["--kvstore-address", self.kvstore_address]
        if s.engine == "mock":
            args += s.mock_flags()
        if s.engine == "vllm" and s.pin_cores:
            args += ["--cpu-cores", str(position % (os.cpu_count() or 1))]
        self._spawn(name, f"services.{role}", args)
        self.say(f"{name} starting ({s.engine} engine; log {self.run_dir}/{name}.log)")

    def _start_kvstore(self, model_dir: str) -> None:
        s = self.settings
        self.kvstore_address = f"{s.host}:{free_port()}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        arena = f"/dev/shm/tandem-{s.namespace}-{os.getpid()}-arena"
        store = kvstore_settings(
            s.namespace, s.host, int(self.kvstore_address.rsplit(":", 1)[1]), arena, self.run_dir,
            s.kvstore_cxl_mib, s.kvstore_nvme_mib, slot_bytes(s.engine, s.dtype, model_dir),
            s.otlp_endpoint, metrics_port)
        self._spawn("kvstore", "services.kvstore", flags_of(store))
        self.cleanup_paths.append(Path(arena))
        self.say(f"kvstore starting on {self.kvstore_address} (arena {arena}, "
                 f"{s.kvstore_cxl_mib} MiB; log {self.run_dir}/kvstore.log)")

    def _wait_kvstore(self) -> None:
        """Workers connect to the store when they start: it must serve first."""
        wait_ready([self.services[-1]], self._kvstore_ready, self.settings.startup_timeout_s,
                   "kvstore not serving", poll_s=0.1)
        self.say(f"kvstore serving on {self.kvstore_address}")

    @property
    def http_url(self) -> str:
        s = self.settings
        return f"{self.security.http_scheme}://{s.host}:{s.http_port}"

    def describe(self) -> dict[str, object]:
        s = self.settings
        return {"router_http_url": self.http_url,
                "router_grpc_address": f"{s.host}:{s.grpc_port}",
                "planner_address": f"{s.host}:{s.planner_port}" if s.planner else None,
                "redis_url": self.redis_url, "metrics_urls": self.metrics_urls,
                "kvstore_address": self.kvstore_address, "namespace": s.namespace,
                "pids": {service.name: service.pid for service in self.services
                         if service.running},
                "redis_pid": self.redis.process.pid if self.redis is not None else None}

    def write_description(self) -> None:
        # the Redis URL, with its password: owner only; replaced whole, so a reader never
        # sees it half written (the launch-supervision test read it empty once)
        path = self.run_dir / "system.json"
        written = path.with_suffix(".json.new")
        written.touch(mode=0o600)
        written.write_text(json.dumps(self.describe(), indent=2))
        os.replace(written, path)

    def _wait_ready(self) -> None:
        url = f"{self.http_url}/health"
        started = time.monotonic()
        wait_ready(
            self.services,
            lambda: self._router_ready(url) and self._kvstore_ready() and self._workers_registered()
            and self._planner_ready(),
            self.settings.startup_timeout_s, "not ready", poll_s=0.5,
            progress=lambda elapsed: self.say(
                f"waiting for the engine(s) to load ({elapsed:.0f} s)"))
        self.say(f"ready in {time.monotonic() - started:.0f} s")

    def _router_ready(self, url: str) -> bool:
        """The router answers /health: with a decode worker, or, when the system starts
        without any (--decode-workers 0), ready ("no workers", 503) for the planner's first."""
        if self.settings.decode_workers:
            return http_ok(url, context=self.security.http_context)
        health = http_json(url, context=self.security.http_context)
        return health is not None and health.get("status") in ("ok", "no workers")

    def _workers_registered(self) -> bool:
        """Every worker has passed its canary and holds a discovery lease."""
        import redis

        from tandem.discovery import worker_key

        names = [service.name for service in self.services
                 if service.name.startswith(("decode-", "prefill-"))]
        with redis.Redis.from_url(self.redis_url) as client:
            keys = [worker_key(self.settings.namespace, name) for name in names]
            return bool(client.exists(*keys) == len(keys)) if keys else True

    def _planner_ready(self) -> bool:
        return not self.settings.planner or grpc_serving(
            f"{self.settings.host}:{self.settings.planner_port}",
            grpc_settings=self.security.grpc)

    def _kvstore_ready(self) -> bool:
        return not self.kvstore_address or grpc_serving(self.kvstore_address,
                                                        grpc_settings=self.security.grpc)

    def stop(self) -> None:
        stop_all(reversed(self.services))
        self.services.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        for path in self.cleanup_paths:
            path.unlink(missing_ok=True)


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
        scaler = (WorkerScaler.connect(system, system.redis_url, settings.namespace,
                                       supervisor, system.security.grpc)
                  if settings.planner else None)
        while len(supervisor.ended) < len(system.services):
            if scaler is not None:
                scaler.round()
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
