"""A private Redis for the local system and the tests, when none is configured: optionally with
a password (``requirepass``, given on the server's standard input, never on its command line)
and TLS (``--tls-port``; clients verify it against the CA, and authenticate with the password)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from tandem.service.tls import TlsSettings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` child process on a free loopback port, without persistence (or,
    with ``persistent``, with an append-only file fsynced on every write and RDB snapshots:
    a restart finds what was written before the kill). ``password``: clients must AUTH;
    ``tls``: the server's certificate, key and CA (TLS only, no plaintext port)."""

    def __init__(self, workdir: Path | None = None, port: int | None = None,
                 persistent: bool = False, password: str = "",
                 tls: TlsSettings | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install redis-server) "
                "or point TANDEM_REDIS_URL at a running Redis"
            )
        self.binary = binary
        self.persistent = persistent
        self.password = password
        self.tls = tls if tls is not None and tls.enabled else None
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tandem-redis-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = self._spawn()
        self._wait_ready()

    def _spawn(self) -> subprocess.Popen[bytes]:
        persistence = (["--save", "1 1", "--appendonly", "yes", "--appendfsync", "always"]
                       if self.persistent else ["--save", "", "--appendonly", "no"])
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                     "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"]
        process = subprocess.Popen(
            [self.binary, *ports, "--bind", "127.0.0.1", *persistence,
             "--dir", str(self.workdir), "--loglevel", "warning", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdin is not None
        # the configuration on standard input: a password there is in no process listing
        process.stdin.write(f"requirepass {self.password}\n".encode() if self.password
                            else b"")
        process.stdin.close()
        return process

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash): everything it held is lost."""
        if self.running:
            self.process.kill()
        self.process.wait(5)

    def pause(self) -> None:
        """SIGSTOP (a hung Redis): connections stay open and nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``: it expires at once every key whose TTL passed meanwhile."""
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """A new redis-server on the same port (after ``kill`` or a crash): empty, or with
        what its files kept when ``persistent``."""
        self.kill()
        self.process = self._spawn()
        self._wait_ready()

    @property
    def url(self) -> str:
        """The URL clients connect with: ``redis://``, or ``rediss://`` with the CA to verify
        the server; the password in it (``tandem.security.redact`` masks it for display)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = urllib.parse.urlencode({"ssl_ca_certs": self.tls.ca})
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not become ready")

    def _answers(self) -> bool:
        if self.password or self.tls is not None:
            import redis

            try:
                with redis.Redis.from_url(self.url, socket_timeout=0.5,
                                          socket_connect_timeout=0.2) as client:
                    return bool(client.ping())
            except (redis.RedisError, OSError):
                return False
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", self.port), timeout=0.2
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()  # a paused server would not act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
