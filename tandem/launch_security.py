"""The launcher's security (``--tls-dir``): which certificate each service presents, the private
Redis's password and TLS, how the launcher's own probes reach the services, and how the Redis
URL reaches each service (its environment: a password on a command line is in every process
listing)."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path
from typing import Any

from tandem.service.groups import GrpcSettings
from tandem.service.tls import TlsSettings, client_context

LAUNCHER = "launcher"
"""The certificate of the launcher's own calls (readiness probes, drains)."""
REDIS = "redis"
"""The private Redis's certificate."""


def env_prefix(module: str) -> str:
    """A service module's environment prefix (``services.kvstore`` → ``TANDEM_KVSTORE_``), as
    ``tandem.service.lifecycle.service_main`` reads it."""
    return f"TANDEM_{module.rsplit('.', 1)[-1].upper()}_"


class LaunchSecurity:
    """Everything ``--tls-dir`` changes; without it, plaintext and no Redis password."""

    def __init__(self, tls_dir: str | None) -> None:
        self.dir = Path(tls_dir).resolve() if tls_dir else None
        self.grpc = GrpcSettings(tls=self.tls(LAUNCHER))
        """The launcher's own gRPC calls."""
        self.http_context: ssl.SSLContext | None = (
            client_context(self.grpc.tls) if self.dir is not None else None)
        """How the launcher verifies the router's HTTPS."""
        self.http_scheme = "https" if self.dir is not None else "http"
        self.redis_password = secrets.token_urlsafe(24) if self.dir is not None else ""

    def tls(self, name: str) -> TlsSettings:
        """The TLS settings of the certificate ``name`` in the directory (off without one)."""
        if self.dir is None:
            return TlsSettings()
        for path in (self.dir / f"{name}.pem", self.dir / f"{name}-key.pem", self.dir / "ca.pem"):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: make it with "
                                        f"python -m tandem.security.devca --out {self.dir}")
        return TlsSettings(str(self.dir / f"{name}.pem"), str(self.dir / f"{name}-key.pem"),
                           str(self.dir / "ca.pem"))

    def flags(self, module: str) -> list[str]:
        """The --tls-* flags of the service ``module`` (``services.decode``: decode.pem)."""
        return self.tls(module.rsplit(".", 1)[-1]).flags()

    @staticmethod
    def env(module: str, redis_url: str) -> dict[str, str]:
        """The service's environment: its Redis URL."""
        return {f"{env_prefix(module)}REDIS_URL": redis_url} if redis_url else {}

    def private_redis(self) -> dict[str, Any]:
        """``PrivateRedis``'s security arguments."""
        if self.dir is None:
            return {}
        return {"password": self.redis_password, "tls": self.tls(REDIS)}
