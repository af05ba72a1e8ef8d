"""Starting a service as a child process and waiting until it is ready: the one way the local
launcher, the tests and the benchmarks start services (and ``deploy/healthcheck.py`` probes
them).

    store = ServiceProcess("kvstore", "services.kvstore", ["--port", "50080"]).start()
    store.wait_ready(lambda: grpc_serving("127.0.0.1:50080"), timeout_s=60)
    ...
    store.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from tandem.service.groups import GrpcSettings

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: children run there, with it on their PYTHONPATH."""

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
"""What every child gets: no model hub, unbuffered output."""


class ServiceExited(RuntimeError):
    """A child process ended while it was waited for."""


class ServiceProcess:
    """``python -m <module> <args>`` as a child in a session of its own (so stopping it also
    stops what it started), its output in ``log_path`` (default: inherited; ``quiet`` drops
    its standard output, its errors still show)."""

    def __init__(self, name: str, module: str, args: Sequence[str] = (), *,
                 log_path: Path | None = None, env: Mapping[str, str] | None = None,
                 quiet: bool = False) -> None:
        self.name = name
        self.command = [sys.executable, "-m", module, *args]
        self.log_path = log_path
        self.env = {**os.environ, **OFFLINE_ENV, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.quiet = quiet
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (the child writes to it)
        stdout: IO[bytes] | int | None
        stderr: int | None
        if self._log is not None:
            stdout, stderr = self._log, subprocess.STDOUT
        else:
            stdout, stderr = (subprocess.DEVNULL if self.quiet else None), None
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=stdout,
                                        stderr=stderr, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raises ``ServiceExited`` (with the log's last lines) if the child has ended."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_tail()
            raise ServiceExited(f"{self.name} exited with {self.process.returncode}"
                                + (f"; last log lines:\n{tail}" if tail else ""))

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> Self:
        wait_ready([self], ready, timeout_s, f"{self.name} not ready")
        return self

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL to the child's whole session: no drain, no cleanup (a crash)."""
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (the service drains), then SIGKILL to its session past ``timeout_s``."""
        self.signal(signal.SIGTERM)
        self.wait_stopped(time.monotonic() + timeout_s)

    def wait_stopped(self, deadline: float) -> None:
        """Waits until ``deadline`` (monotonic) for the child to end, then kills it."""
        if self.process is not None:
            try:
                self.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def stop_all(processes: Iterable[ServiceProcess], timeout_s: float = 20.0) -> None:
    """SIGTERM to every process at once (in the order given), then waits for them together."""
    processes = list(processes)
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.wait_stopped(deadline)


def wait_ready(processes: Iterable[ServiceProcess], ready: Callable[[], bool],
               timeout_s: float, what: str = "not ready",
               progress: Callable[[float], None] | None = None,
               poll_s: float = 0.1) -> None:
    """Polls ``ready`` until it holds; raises ``ServiceExited`` as soon as one of
    ``processes`` ends and ``TimeoutError`` after ``timeout_s``. ``progress(elapsed)`` is
    called about every 10 s of waiting."""
    processes = list(processes)
    started = last_note = time.monotonic()
    while True:
        for process in processes:
            process.check_alive()
        if ready():
            return
        now = time.monotonic()
        if now - started > timeout_s:
            raise TimeoutError(f"{what} after {timeout_s:.0f} s")
        if progress is not None and now - last_note >= 10:
            progress(now - started)
            last_note = now
        time.sleep(poll_s)


# --- readiness checks (each one cheap, answering at once) -------------------------------------

def grpc_health(address: str, service: str = "", timeout_s: float = 1.0,
                grpc_settings: GrpcSettings | None = None) -> str:
    """The health status a gRPC server reports (``SERVING``, ``NOT_SERVING``, ...), or
    ``UNREACHABLE`` / ``TIMEOUT`` / the status code's name when the call fails (over TLS when
    ``grpc_settings`` carry a certificate)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    from tandem.service.channels import sync_channel

    with sync_channel(address, grpc_settings) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return {grpc.StatusCode.UNAVAILABLE: "UNREACHABLE",
                    grpc.StatusCode.DEADLINE_EXCEEDED: "TIMEOUT"}.get(
                        code, getattr(code, "name", "UNKNOWN"))
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def grpc_serving(address: str, service: str = "", timeout_s: float = 1.0,
                 grpc_settings: GrpcSettings | None = None) -> bool:
    """Whether the gRPC server at ``address`` reports SERVING (its canary passed)."""
    return grpc_health(address, service, timeout_s, grpc_settings) == "SERVING"


def http_status(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None
                ) -> int | str:
    """The HTTP status of a GET, or why there is none (``context``: how an https URL's server
    is verified)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        return str(getattr(error, "reason", error))


def http_json(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None
              ) -> dict[str, object] | None:
    """The JSON body of a GET of ``url`` whatever its status (a 503 says why), or None when
    nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            body = reply.read()
    except urllib.error.HTTPError as error:
        body = error.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return None
    return dict(json.loads(body or b"{}"))


def http_ok(url: str, timeout_s: float = 2.0, context: ssl.SSLContext | None = None) -> bool:
    """Whether a GET of ``url`` answers 2xx."""
    status = http_status(url, timeout_s, context)
    return isinstance(status, int) and 200 <= status < 300
