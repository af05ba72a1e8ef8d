"""Container health probe for tandem services (a Python stand-in for ``grpc_health_probe``).

    python deploy/healthcheck.py grpc 127.0.0.1:50060 [--service tandem.v1.DecodeService]
    python deploy/healthcheck.py http http://127.0.0.1:8000/health

``grpc`` calls ``grpc.health.v1.Health/Check`` and exits 0 only when the answer is SERVING (every
tandem server reports NOT_SERVING until its canary request succeeded). ``http`` exits 0 on a 2xx
answer. Exit 1: reachable but not healthy; exit 2: unreachable or timed out. Used by compose
health checks; Kubernetes uses its native gRPC/HTTP probes instead. Over TLS when
``TANDEM_HEALTHCHECK_TLS_CERT``, ``_KEY``, ``_CA`` (and ``_SERVER_NAME``) are set: the service's
own certificate, as compose.tls.yaml sets them.
"""

from __future__ import annotations

import argparse
import os
import sys

from tandem.service.groups import GrpcSettings
from tandem.service.spawn import grpc_health, http_status
from tandem.service.tls import TlsSettings, client_context

_UNREACHABLE = ("UNREACHABLE", "TIMEOUT")


def tls_from_env(env: dict[str, str] | None = None) -> TlsSettings:
    """The probe's TLS settings from ``TANDEM_HEALTHCHECK_TLS_*`` (off when unset)."""
    env = dict(os.environ) if env is None else env
    prefix = "TANDEM_HEALTHCHECK_TLS_"
    return TlsSettings(env.get(f"{prefix}CERT", ""), env.get(f"{prefix}KEY", ""),
                       env.get(f"{prefix}CA", ""), server_name=env.get(f"{prefix}SERVER_NAME", ""))


def check_grpc(address: str, service: str, timeout: float) -> int:
    status = grpc_health(address, service, timeout, GrpcSettings(tls=tls_from_env()))
    if status == "SERVING":
        return 0
    print(f"{address}: {status}", file=sys.stderr)
    return 2 if status in _UNREACHABLE else 1


def check_http(url: str, timeout: float) -> int:
    tls = tls_from_env()
    status = http_status(url, timeout, client_context(tls) if tls.enabled else None)
    if isinstance(status, int) and 200 <= status < 300:
        return 0
    print(f"{url}: {f'HTTP {status}' if isinstance(status, int) else status}", file=sys.stderr)
    return 1 if isinstance(status, int) else 2


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = sub.add_parser("grpc", help="gRPC health check", parents=[common])
    grpc_parser.add_argument("address", help="host:port")
    grpc_parser.add_argument("--service", default="", help="service name ('' = whole server)")
    http_parser = sub.add_parser("http", help="HTTP GET expecting 2xx", parents=[common])
    http_parser.add_argument("url")
    args = parser.parse_args(argv)
    if args.kind == "grpc":
        return check_grpc(args.address, args.service, args.timeout)
    return check_http(args.url, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
