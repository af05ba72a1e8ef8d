"""The Docker side of tests/compose: a Docker engine (the configured one, or a private dockerd
started for the test and stopped after it), the images (the local base, the Redis stand-in, the
tandem image, built through compose with cached layers) and compose commands on the test's own
project (``tandem-test``), which is taken down with its volumes at the end. The images stay:
they are the cache that makes the next run fast."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "tests" / "compose" / "compose.host.yaml"
BASE_SCRIPT = ROOT / "scripts" / "docker-base.sh"
PROJECT = "tandem-test"
CORE = ("redis", "kvstore", "router", "decode", "prefill")
"""The services the test runs (compose.yaml's core stack, without the observability ones)."""
BUILT = ("redis", "kvstore")
"""One service per image to build: kvstore builds tandem:0.1.0, which the others share."""
TANDEM_IMAGE = "tandem:0.1.0"
CACHE = Path(os.environ.get("TANDEM_DOCKER_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tandem-docker")
"""Data root of the private dockerd: the image cache that outlives a run."""
WHEELS = Path(os.environ.get("TANDEM_TORCH_WHEELS", "/opt/wheels"))
"""Where this machine keeps the torch CPU wheel (served to the image build if there)."""
WHEELS_PORT = int(os.environ.get("TANDEM_TORCH_WHEELS_PORT", "25090"))
"""A fixed port: the wheels' URL is a build argument, and a new value rebuilds the install
layer (2-20 minutes) instead of taking it from the cache."""


def say(message: str) -> None:
    print(f"==> [compose] {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], *, env: dict[str, str], timeout_s: float,
        capture: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One command with its output shown (or captured), failing loudly with its tail."""
    say(shlex.join(command))
    result = subprocess.run(list(command), env=env, cwd=ROOT, text=True, timeout=timeout_s,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {result.returncode}\n"
                           f"{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}")
    return result


class Engine:
    """A Docker engine to talk to: DOCKER_HOST or /var/run/docker.sock when one answers there,
    else a private dockerd (no bridge, no iptables: containers use the host's network) whose
    data root is the cache folder and whose sockets live in a temporary exec root."""

    def __init__(self) -> None:
        self.env = {**os.environ, "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
        self.process: subprocess.Popen[bytes] | None = None
        self.exec_root: Path | None = None
        self.lock: IO[str] | None = None

    def answers(self) -> bool:
        return subprocess.run(["docker", "info"], env=self.env, capture_output=True,
                              timeout=30).returncode == 0

    def start(self, timeout_s: float = 120.0) -> Engine:
        configured = os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()
        if configured and self.answers():
            say(f"using the configured engine ({os.environ.get('DOCKER_HOST', 'docker.sock')})")
            return self
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("no Docker engine and no dockerd: scripts/install-docker.sh")
        CACHE.mkdir(parents=True, exist_ok=True)
        self.lock = (CACHE / "lock").open("w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # one private dockerd per data root at a time
        self.exec_root = Path(tempfile.mkdtemp(prefix="tandem-dockerd-", dir="/tmp"))
        socket = self.exec_root / "docker.sock"
        log = (self.exec_root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [dockerd, "--storage-driver", "overlay2", "--iptables=false", "--ip6tables=false",
             "--bridge=none", "--data-root", str(CACHE / "data"),
             "--exec-root", str(self.exec_root / "exec"), "--pidfile",
             str(self.exec_root / "dockerd.pid"), "-H", f"unix://{socket}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env["DOCKER_HOST"] = f"unix://{socket}"
        deadline = time.monotonic() + timeout_s
        while not (socket.exists() and self.answers()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{self.log_tail()}")
            time.sleep(0.5)
        say(f"private dockerd {self.process.pid} on {socket} (data root {CACHE / 'data'})")
        return self

    def log_tail(self) -> str:
        if self.exec_root is None:
            return ""
        return (self.exec_root / "dockerd.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            say(f"private dockerd {self.process.pid} stopped")
            self.process = None
        if self.exec_root is not None:
            # dockerd leaves its default network namespace mounted under the exec root.
            root = str(self.exec_root)
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                      .splitlines() if line.split()[4].startswith(root + "/")]
            for mount in sorted(mounts, reverse=True):
                subprocess.run(["umount", mount], check=False)
            shutil.rmtree(self.exec_root)
            self.exec_root = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def docker(self, *args: str, timeout_s: float = 120.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env, timeout_s=timeout_s, capture=True,
                   check=check)

    def has_image(self, image: str) -> bool:
        return self.docker("image", "inspect", image, check=False).returncode == 0

    def image_bytes(self, image: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", image).stdout)


def base_image(engine: Engine) -> str:
    """The local Debian base (PYTHON_IMAGE), built once per version of its script."""
    digest = hashlib.sha256(BASE_SCRIPT.read_bytes()).hexdigest()[:12]
    image = f"tandem-base:bookworm-{digest}"
    if not engine.has_image(image):
        run(["nice", "-n", "10", str(BASE_SCRIPT), image], env=engine.env, timeout_s=1200)
    return image


@contextlib.contextmanager
def torch_wheels() -> Iterator[str]:
    """An HTTP folder listing (pip's --find-links) of the local torch CPU wheel on loopback,
    for the image build on the host's network; "" where this machine has none."""
    if not any(WHEELS.glob("torch-*+cpu-*.whl")):
        yield ""
        return
    handler = functools.partial(_QuietHandler, directory=str(WHEELS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", WHEELS_PORT), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def compose_command(env: dict[str, str]) -> list[str]:
    """TANDEM_COMPOSE, else Compose v2 (`docker compose`), else docker-compose 1.29."""
    if env.get("TANDEM_COMPOSE"):
        return shlex.split(env["TANDEM_COMPOSE"])
    if subprocess.run(["docker", "compose", "version"], env=env,
                      capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor docker-compose: scripts/install-docker.sh")


def render(command: list[str], env: dict[str, str]) -> Path:
    """compose.yaml + the override as one file, less the published ports of host-networked
    services: docker-compose 1.29 refuses `ports` beside `network_mode: host` (a check of its
    Docker client; the engine and Compose v2 ignore them), and an override cannot take a list
    entry away in 1.29 (v2's `!reset` can), so the router's published ports are dropped here."""
    config = yaml.safe_load(run([*command, "config"], env=env, timeout_s=60, capture=True).stdout)
    for service in config["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    handle, path = tempfile.mkstemp(prefix="tandem-compose-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    return Path(path)


class Stack:
    """compose.yaml plus the test's override, as the project ``tandem-test``."""

    def __init__(self, engine: Engine, base: str, torch_links: str) -> None:
        self.engine = engine
        self.env = {**engine.env, "TANDEM_TEST_BASE_IMAGE": base,
                    "TANDEM_TEST_TORCH_FIND_LINKS": torch_links}
        project = [*compose_command(self.env), "--project-name", PROJECT,
                   "--project-directory", str(ROOT)]
        self.rendered = render(
            [*project, "--file", str(ROOT / "compose.yaml"), "--file", str(OVERRIDE)], self.env)
        self.command = [*project, "--file", str(self.rendered)]

    def compose(self, *args: str, timeout_s: float = 300.0, capture: bool = False,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.command, *args], env=self.env, timeout_s=timeout_s, capture=capture,
                   check=check)

    def build(self) -> None:
        for service in BUILT:  # one at a time: two builds at once on 2 cores only thrash
            run(["nice", "-n", "10", *self.command, "build", service], env=self.env,
                timeout_s=3600)
        if self.engine.process is not None:  # the private cache only: superseded images go
            self.engine.docker("image", "prune", "--force")

    def up(self) -> None:
        self.compose("up", "--detach", "--no-build", *CORE, timeout_s=900)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout_s=300)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service, capture=True).stdout.split()
        if len(ids) != 1:
            raise RuntimeError(f"{service}: {len(ids)} containers")
        return ids[0]

    def state(self, service: str) -> dict[str, Any]:
        out = self.engine.docker("inspect", "--format", "{{json .}}", self.container(service))
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def health(self, service: str) -> tuple[str, int, str]:
        """(health status or container status, restarts, the last probe's output)."""
        data = self.state(service)
        state = data["State"]
        health = state.get("Health") or {}
        probes = health.get("Log") or [{}]
        status = health.get("Status", state["Status"]) if state["Running"] else state["Status"]
        return status, int(data.get("RestartCount", 0)), str(probes[-1].get("Output", ""))

    def wait_healthy(self, timeout_s: float) -> dict[str, float]:
        """Seconds from now until each service's health check first passed; fails at once when
        a container exits or restarts (with its log), else after timeout_s."""
        start = time.monotonic()
        healthy: dict[str, float] = {}
        while len(healthy) < len(CORE):
            for service in CORE:
                if service in healthy:
                    continue
                status, restarts, probe = self.health(service)
                if status == "healthy":
                    healthy[service] = time.monotonic() - start
                    say(f"{service} healthy after {healthy[service]:.0f} s")
                # "unhealthy" is no verdict yet (the router is, until a worker has loaded);
                # an exit or a restart is.
                elif restarts or status not in ("starting", "unhealthy", "running"):
                    raise RuntimeError(f"{service} is {status} after {restarts} restarts "
                                       f"(probe: {probe.strip()})\n{self.logs(service)}")
            if time.monotonic() - start > timeout_s:
                waiting = sorted(set(CORE) - set(healthy))
                raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {waiting}\n"
                                   + "\n".join(self.logs(s) for s in waiting))
            time.sleep(2)
        return healthy

    def logs(self, service: str, lines: int = 60) -> str:
        result = self.compose("logs", "--no-color", "--tail", str(lines), service,
                              capture=True, check=False)
        return f"--- {service} ---\n{result.stdout}{result.stderr}"

    def leftovers(self) -> dict[str, list[str]]:
        """What the project still owns in the engine (containers, networks, volumes)."""
        label = f"label=com.docker.compose.project={PROJECT}"
        found: dict[str, list[str]] = {}
        for kind, args in (("containers", ["ps", "-a", "-q"]),
                           ("networks", ["network", "ls", "-q"]),
                           ("volumes", ["volume", "ls", "-q"])):
            found[kind] = self.engine.docker(*args, "--filter", label).stdout.split()
        return found
