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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tandem.config import load_settings
from tandem.model import DEFAULT_MODEL_NAME, default_model_dir, is_prepared, prepare
from tandem.redis_local import PrivateRedis, free_port


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
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
    engine: str = "vllm"
    """Engine of the workers: "vllm" (real) or "mock" (simulated)."""
    decode_workers: int = 1
    """Number of decode workers."""
    prefill_workers: int = 1
    """Number of prefill workers (0: every decode worker prefills its own prompts). They need
    the KV store, through which their KV cache reaches the decode workers."""
    disaggregation: str = "auto"
    """Router: remote prefill "auto" (long uncached prompts), "always" or "never"."""
    kvstore: bool = True
    """Start the KV store (shared-memory arena + disk tier) with the system."""
    kvstore_cxl_mib: int = 256
    """Capacity of the KV store's shared-memory arena (/dev/shm), MiB."""
    kvstore_nvme_mib: int = 2048
    """Capacity of the KV store's disk tier (under run_dir), MiB."""
    model_dir: str | None = None
    """Local model directory (default: SmolLM2-135M-Instruct, prepared on first use)."""
    served_model_name: str = DEFAULT_MODEL_NAME
    """Model name clients use."""
    max_model_len: int = 4096
    """Maximum prompt + completion tokens."""
    kv_cache_gib: int = 1
    """KV cache per vLLM worker, GiB."""
    pin_cores: bool = True
    """Bind each vLLM worker to its own core (worker i → core i mod cores)."""
    run_dir: str = "run"
    """Where service logs (<service>.log) and system.json (addresses) are written."""
    startup_timeout_s: float = 300.0
    """How long the system may take to become ready."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector endpoint for every service's traces."""
    namespace: str = "tandem"
    """Prefix of every Redis key."""

    def validate(self) -> None:
        if self.engine not in ("vllm", "mock"):
            raise ValueError(f"--engine must be vllm or mock, not {self.engine!r}")
        if self.decode_workers < 1:
            raise ValueError("--decode-workers must be at least 1")
        if self.prefill_workers < 0:
            raise ValueError("--prefill-workers must be >= 0")
        if self.prefill_workers and not self.kvstore:
            raise ValueError("prefill workers need the KV store (--kvstore true)")


@dataclasses.dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]


class LocalSystem:
    """Starts and stops the processes of one local system."""

    def __init__(self, settings: LaunchSettings) -> None:
        self.settings = settings
        self.run_dir = Path(settings.run_dir)
        self.services: list[Service] = []
        self.redis: PrivateRedis | None = None
        self.redis_url = settings.redis_url or ""
        self.metrics_urls: list[str] = []
        self.kvstore_address = ""
        self.cleanup_paths: list[Path] = []

    def say(self, message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    def _spawn(self, name: str, module: str, args: list[str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the child)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.services.append(Service(name, process, log))

    def start(self) -> None:
        s = self.settings
        model_dir = s.model_dir or str(default_model_dir())
        if s.model_dir is None and not is_prepared(Path(model_dir)):
            prepare()
        if not s.redis_url:
            self.redis = PrivateRedis(self.run_dir / "redis")
            self.redis_url = self.redis.url
            self.say(f"private redis on {self.redis_url}")
        common = ["--redis-url", self.redis_url, "--namespace", s.namespace,
                  "--served-model-name", s.served_model_name, "--model-dir", model_dir,
                  "--max-model-len", str(s.max_model_len)]
        if s.otlp_endpoint:
            common += ["--otlp-endpoint", s.otlp_endpoint]
        if s.kvstore:
            self._start_kvstore()
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
        (self.run_dir / "system.json").write_text(json.dumps(self.describe(), indent=2))

    def _start_worker(self, role: str, index: int, position: int, common: list[str]) -> None:
        """One engine worker; vLLM workers are pinned one per core, in start order."""
        s = self.settings
        name = f"{role}-{index}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        args = [*common, "--host", s.host, "--port", "0", "--engine", s.engine,
                "--worker-id", name, "--kv-cache-gib", str(s.kv_cache_gib),
                "--metrics-port", str(metrics_port)]
        if self.kvstore_address:
            args += ["--kvstore-address", self.kvstore_address]
        if s.engine == "vllm" and s.pin_cores:
            args += ["--cpu-cores", str(position % (os.cpu_count() or 1))]
        self._spawn(name, f"services.{role}", args)
        self.say(f"{name} starting ({s.engine} engine; log {self.run_dir}/{name}.log)")

    def _start_kvstore(self) -> None:
        s = self.settings
        self.kvstore_address = f"{s.host}:{free_port()}"
        metrics_port = free_port()
        self.metrics_urls.append(f"http://{s.host}:{metrics_port}/metrics")
        arena = f"/dev/shm/tandem-{s.namespace}-{os.getpid()}-arena"
        self._spawn("kvstore", "services.kvstore", [
            "--redis-url", self.redis_url, "--namespace", s.namespace, "--host", s.host,
            "--port", self.kvstore_address.rsplit(":", 1)[1],
            "--metrics-port", str(metrics_port),
            "--cxl-path", arena, "--cxl-capacity-bytes", str(s.kvstore_cxl_mib << 20),
            "--nvme-path", str(self.run_dir.resolve() / "kvstore-nvme"),
            "--nvme-capacity-bytes", str(s.kvstore_nvme_mib << 20),
            *(["--otlp-endpoint", s.otlp_endpoint] if s.otlp_endpoint else [])])
        self.cleanup_paths.append(Path(arena))
        self.say(f"kvstore starting on {self.kvstore_address} (arena {arena}, "
                 f"{s.kvstore_cxl_mib} MiB; log {self.run_dir}/kvstore.log)")

    def describe(self) -> dict[str, object]:
        s = self.settings
        return {"router_http_url": f"http://{s.host}:{s.http_port}",
                "router_grpc_address": f"{s.host}:{s.grpc_port}",
                "redis_url": self.redis_url, "metrics_urls": self.metrics_urls,
                "kvstore_address": self.kvstore_address, "namespace": s.namespace,
                "pids": {service.name: service.process.pid for service in self.services}}

    def _wait_ready(self) -> None:
        url = f"http://{self.settings.host}:{self.settings.http_port}/health"
        started = time.monotonic()
        last_note = started
        while True:
            for service in self.services:
                if service.process.poll() is not None:
                    tail = (self.run_dir / f"{service.name}.log").read_text(errors="replace")
                    raise RuntimeError(f"{service.name} exited with {service.process.returncode}"
                                       f"; last log lines:\n" + "\n".join(tail.splitlines()[-15:]))
            if self._router_ready(url) and self._kvstore_ready() and self._workers_registered():
                self.say(f"ready in {time.monotonic() - started:.0f} s")
                return
            now = time.monotonic()
            if now - started > self.settings.startup_timeout_s:
                raise TimeoutError(f"not ready after {self.settings.startup_timeout_s:.0f} s")
            if now - last_note > 10:
                self.say(f"waiting for the engine(s) to load ({now - started:.0f} s)")
                last_note = now
            time.sleep(0.5)

    @staticmethod
    def _router_ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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
        if not self.kvstore_address:
            return True
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

        with grpc.insecure_channel(self.kvstore_address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for service in reversed(self.services):
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
            service.log.close()
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
        while all(service.process.poll() is None for service in system.services):
            time.sleep(0.5)
        print("a service exited; stopping the system", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        print("==> stopping", file=sys.stderr, flush=True)
        system.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
