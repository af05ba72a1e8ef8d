"""A private Redis for the local system and the tests, when none is configured."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` child process on a free loopback port, without persistence (or,
    with ``persistent``, with an append-only file fsynced on every write and RDB snapshots:
    a restart finds what was written before the kill)."""

    def __init__(self, workdir: Path | None = None, port: int | None = None,
                 persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install redis-server) "
                "or point TANDEM_REDIS_URL at a running Redis"
            )
        self.binary = binary
        self.persistent = persistent
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tandem-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = self._spawn()
        self._wait_ready()

    def _spawn(self) -> subprocess.Popen[bytes]:
        persistence = (["--save", "1 1", "--appendonly", "yes", "--appendfsync", "always"]
                       if self.persistent else ["--save", "", "--appendonly", "no"])
        return subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *persistence,
             "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash): everything it held is lost."""
        if self.running:
            self.process.kill()
        self.process.wait(5)

    def restart(self) -> None:
        """A new redis-server on the same port (after ``kill`` or a crash): empty, or with
        what its files kept when ``persistent``."""
        self.kill()
        self.process = self._spawn()
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
