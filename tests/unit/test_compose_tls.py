"""compose.tls.yaml (TLS on every hop of the compose stack), checked without Docker: it matches
the Compose Specification, overrides only services compose.yaml has, gives every tandem service
its own certificate (one devca makes), the CA, the shared server name and a rediss:// URL with
the password from the environment, and starts Redis over TLS with the password off its command
line; each service's health probe uses the service's certificate."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import yaml

from tandem.security.devca import SERVICES
from tests.unit.test_compose_file import ROOT, SCHEMA, compose, environment, tandem_module

OVERRIDE = ROOT / "compose.tls.yaml"
SERVER_NAME = "tandem.internal"


def override() -> dict[str, Any]:
    data = yaml.safe_load(OVERRIDE.read_text())
    assert isinstance(data, dict)
    return data


def tls_services() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every tandem service of compose.yaml: its module (the certificate's name) and override."""
    found = {}
    for name, service in compose()["services"].items():
        module = tandem_module(service)
        if module is not None:
            found[name] = (module, override()["services"].get(name, {}))
    return found


def test_override_matches_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert not list(validator.iter_errors(override()))
    assert set(override()["services"]) <= set(compose()["services"])


def test_every_tandem_service_gets_its_certificate_and_a_secure_redis_url() -> None:
    services = tls_services()
    assert {module for module, _ in services.values()} == {
        "router", "decode", "prefill", "kvstore", "planner"}
    for name, (module, service) in services.items():
        env = environment(service)
        prefix = f"TANDEM_{module.upper()}_"
        assert env.get(f"{prefix}TLS_CERT") == f"/certs/{module}.pem", name
        assert env.get(f"{prefix}TLS_KEY") == f"/certs/{module}-key.pem", name
        assert env.get(f"{prefix}TLS_CA") == "/certs/ca.pem", name
        assert env.get("TANDEM_HEALTHCHECK_TLS_CERT") == f"/certs/{module}.pem", name
        if module != "router":  # the router's probe is HTTPS, checked by host
            assert env.get(f"{prefix}TLS_SERVER_NAME") == SERVER_NAME, name
        assert module in SERVICES, f"devca makes no certificate for {module}"
        assert re.fullmatch(r"rediss://:\$\{TANDEM_REDIS_PASSWORD[^}]*\}@redis:6379/0"
                            r"\?ssl_ca_certs=/certs/ca\.pem", env[f"{prefix}REDIS_URL"]), name
        assert "./certs:/certs:ro" in service.get("volumes", []), name
        # the override's volumes replace nothing compose.yaml mounts
        base = compose()["services"][name].get("volumes", [])
        assert set(base) <= set(service["volumes"]), name


def test_redis_serves_tls_only_with_the_password_off_its_command_line() -> None:
    redis = override()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--port 0" in command and "--tls-port 6379" in command
    assert "requirepass" not in command.split("|", 1)[1], "password on redis-server's argv"
    assert "redis-server -" in command  # the configuration from standard input
    assert "--tls" in redis["healthcheck"]["test"]
    assert "REDISCLI_AUTH" in environment(redis)


def test_router_health_probe_uses_https() -> None:
    test = override()["services"]["router"]["healthcheck"]["test"]
    assert any(str(part).startswith("https://") for part in test)
